"""Tiny test harness shared by the SDK-against-sandbox scripts (run by tests/sandbox_sdk.rs).

Each script defines `test_*` functions; `run()` calls them in order, prints one line per test
and exits non-zero (listing what failed) if any assertion or SDK call failed.
"""
import glob
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"missing environment variable {name} (these scripts are run by `cargo test --test sandbox_sdk`)")
    return value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


_opener = urllib.request.build_opener(_NoRedirect, urllib.request.ProxyHandler({}))


def http(method, url, body=None, headers=None):
    """(status, headers, body text) without following redirects or using proxies."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def control(method, url, body=None):
    status, _, text = http(method, url, body)
    assert status == 200, f"{method} {url} -> {status} {text}"
    return json.loads(text)


def callbacks(directory):
    """Every callback the test's receiver saved, in arrival order."""
    out = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        with open(path, encoding="utf-8") as f:
            out.append(json.load(f))
    return out


def wait_callback(directory, predicate, what, timeout=10.0):
    """The first saved callback whose parsed body satisfies `predicate`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for cb in callbacks(directory):
            try:
                body = json.loads(cb["body"])
            except ValueError:
                continue
            if predicate(body):
                return cb
        time.sleep(0.05)
    raise AssertionError(f"no callback {what} within {timeout}s (got {len(callbacks(directory))} callbacks)")


def expect_raises(exc_type, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def run(module_globals):
    tests = [(n, f) for n, f in module_globals.items() if n.startswith("test_") and callable(f)]
    failed = []
    for name, fn in tests:
        started = time.time()
        try:
            fn()
            print(f"ok    {name} ({time.time() - started:.2f}s)", flush=True)
        except Exception:
            failed.append(name)
            print(f"FAIL  {name}", flush=True)
            traceback.print_exc()
    if failed:
        print(f"\n{len(failed)} of {len(tests)} failed: {', '.join(failed)}", flush=True)
        sys.exit(1)
    print(f"\nall {len(tests)} passed", flush=True)
