"""The official global-open-sdk-python (1.7.1) against the paymux sandbox's Antom simulator.

Only the gateway URL differs from production use. The SDK always connects with TLS to port 443
of the gateway host, so the sandbox serves HTTPS on 127.0.0.2:443 with the test CA in
sandbox/tls/ca.pem (SSL_CERT_FILE). Environment (set by tests/sandbox_sdk.rs): ANTOM_GATEWAY,
ANTOM_CLIENT_ID, ANTOM_INSTANCE, MERCHANT_PRIVATE_KEY_FILE, PROVIDER_PUBLIC_KEY_FILE,
SANDBOX_CONTROL, NOTIFY_URL, WEBHOOK_DIR.
"""
import base64
import json
import uuid
from urllib.parse import urlsplit

from com.alipay.ams.api.default_alipay_client import DefaultAlipayClient
from com.alipay.ams.api.model.amount import Amount
from com.alipay.ams.api.model.env import Env
from com.alipay.ams.api.model.order import Order
from com.alipay.ams.api.model.os_type import OsType
from com.alipay.ams.api.model.payment_method import PaymentMethod
from com.alipay.ams.api.model.product_code_type import ProductCodeType
from com.alipay.ams.api.model.result_status_type import ResultStatusType
from com.alipay.ams.api.model.terminal_type import TerminalType
from com.alipay.ams.api.model.transaction_status_type import TransactionStatusType
from com.alipay.ams.api.request.notify.alipay_pay_result_notify import AlipayPayResultNotify
from com.alipay.ams.api.request.pay.alipay_inquiry_refund_request import AlipayInquiryRefundRequest
from com.alipay.ams.api.request.pay.alipay_pay_cancel_request import AlipayPayCancelRequest
from com.alipay.ams.api.request.pay.alipay_pay_query_request import AlipayPayQueryRequest
from com.alipay.ams.api.request.pay.alipay_pay_request import AlipayPayRequest
from com.alipay.ams.api.request.pay.alipay_refund_request import AlipayRefundRequest
from com.alipay.ams.api.response.pay.alipay_inquiry_refund_response import AlipayInquiryRefundResponse
from com.alipay.ams.api.response.pay.alipay_pay_cancel_response import AlipayPayCancelResponse
from com.alipay.ams.api.response.pay.alipay_pay_query_response import AlipayPayQueryResponse
from com.alipay.ams.api.response.pay.alipay_pay_response import AlipayPayResponse
from com.alipay.ams.api.response.pay.alipay_refund_response import AlipayRefundResponse
from com.alipay.ams.api.tools.webhook_tool import check_signature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import control, env, expect_raises, http, run, wait_callback

GATEWAY = env("ANTOM_GATEWAY")
CLIENT_ID = env("ANTOM_CLIENT_ID")
INSTANCE = env("ANTOM_INSTANCE")
CONTROL = env("SANDBOX_CONTROL")
NOTIFY_URL = env("NOTIFY_URL")
WEBHOOK_DIR = env("WEBHOOK_DIR")


def bare_base64(pem):
    """The SDK wants keys as bare base64 DER (the Antom Dashboard format)."""
    return "".join(line.strip() for line in pem.splitlines() if line.strip() and not line.startswith("-----"))


with open(env("MERCHANT_PRIVATE_KEY_FILE"), encoding="ascii") as f:
    MERCHANT_PRIVATE_KEY = bare_base64(f.read())
with open(env("PROVIDER_PUBLIC_KEY_FILE"), encoding="ascii") as f:
    PROVIDER_PUBLIC_KEY = bare_base64(f.read())

client = DefaultAlipayClient(GATEWAY, CLIENT_ID, MERCHANT_PRIVATE_KEY, PROVIDER_PUBLIC_KEY)
SHARED = {}


def pay_request(prid, value="1000"):
    req = AlipayPayRequest()
    req.product_code = ProductCodeType.CASHIER_PAYMENT
    req.payment_request_id = prid
    req.payment_amount = Amount("HKD", value)
    pm = PaymentMethod()
    pm.payment_method_type = "ALIPAY_HK"
    req.payment_method = pm
    order = Order()
    order.reference_order_id = "ORDER-" + prid
    order.order_description = "Milk tea \u5976\u8336"
    order.order_amount = Amount("HKD", value)
    req.order = order
    e = Env()
    e.terminal_type = TerminalType.WAP
    e.os_type = OsType.IOS
    req.env = e
    req.payment_notify_url = NOTIFY_URL
    req.payment_redirect_url = "https://merchant.example/return?o=" + prid
    return req


def pay(prid, value="1000"):
    return AlipayPayResponse(client.execute(pay_request(prid, value)))


def inquiry(prid=None, payment_id=None):
    q = AlipayPayQueryRequest()
    q.payment_request_id = prid
    q.payment_id = payment_id
    return AlipayPayQueryResponse(client.execute(q))


def verify_notify(cb):
    h = cb["headers"]
    return check_signature(
        "POST", urlsplit(cb["path"]).path, h["client-id"], h["request-time"], cb["body"], h["signature"],
        PROVIDER_PUBLIC_KEY,
    )


def test_pay_is_in_process_and_idempotent():
    prid = "PAY-" + uuid.uuid4().hex[:12]
    p = pay(prid)
    assert p.result.result_status == ResultStatusType.U, p.result.result_status
    assert p.result.result_code == "PAYMENT_IN_PROCESS"
    assert p.payment_id and p.payment_id.isdigit(), p.payment_id
    assert p.payment_request_id == prid
    assert p.normal_url.startswith("http://") and p.scheme_url.startswith("alipayhk://") and p.applink_url
    again = pay(prid)
    assert again.payment_id == p.payment_id, "same paymentRequestId and body must replay"
    other = pay(prid, "2000")
    assert other.result.result_status == ResultStatusType.F and other.result.result_code == "REPEAT_REQ_INCONSISTENT"
    q = inquiry(prid=prid)
    assert q.result.result_status == ResultStatusType.S and q.payment_status == TransactionStatusType.PROCESSING
    status, _, page = http("GET", p.normal_url)
    assert status == 200 and "Approve" in page and prid in page
    SHARED["paid"] = (prid, p.payment_id)


def test_approve_notifies_a_verifiable_payment_result():
    prid, payment_id = SHARED["paid"]
    approved = control("POST", f"{CONTROL}/_sandbox/{INSTANCE}/payments/{payment_id}/approve")
    assert approved["status"] == "SUCCESS", approved
    q = inquiry(payment_id=payment_id)
    assert q.payment_status == TransactionStatusType.SUCCESS and q.payment_time
    cb = wait_callback(
        WEBHOOK_DIR,
        lambda b: b.get("notifyType") == "PAYMENT_RESULT" and b.get("paymentId") == payment_id,
        f"PAYMENT_RESULT for {payment_id}",
    )
    assert urlsplit(cb["path"]).path == urlsplit(NOTIFY_URL).path
    assert verify_notify(cb) is True
    n = AlipayPayResultNotify(cb["body"])
    assert n.notify_type == "PAYMENT_RESULT" and n.result.result_status == ResultStatusType.S
    assert n.payment_request_id == prid and n.payment_amount == {"currency": "HKD", "value": "1000"}
    tampered = dict(cb, body=cb["body"].replace('"1000"', '"1"'))
    expect_raises(Exception, verify_notify, tampered)


def test_decline_notifies_failure():
    prid = "PAY-" + uuid.uuid4().hex[:12]
    p = pay(prid, "300")
    declined = control("POST", f"{CONTROL}/_sandbox/{INSTANCE}/payments/{p.payment_id}/decline")
    assert declined["status"] == "FAIL"
    assert inquiry(prid=prid).payment_status == TransactionStatusType.FAIL
    cb = wait_callback(
        WEBHOOK_DIR, lambda b: b.get("paymentId") == p.payment_id, f"PAYMENT_RESULT for {p.payment_id}"
    )
    assert verify_notify(cb) is True
    body = json.loads(cb["body"])
    assert body["result"]["resultStatus"] == "F" and body["result"]["resultCode"] == "USER_BALANCE_NOT_ENOUGH"


def test_cancel():
    prid = "PAY-" + uuid.uuid4().hex[:12]
    p = pay(prid)
    c = AlipayPayCancelRequest()
    c.payment_request_id = prid
    res = AlipayPayCancelResponse(client.execute(c))
    assert res.result.result_status == ResultStatusType.S and res.cancel_time and res.payment_id == p.payment_id
    assert inquiry(prid=prid).payment_status == TransactionStatusType.CANCELLED
    # A failed payment cannot be cancelled.
    failed = pay("PAY-" + uuid.uuid4().hex[:12], "300")
    control("POST", f"{CONTROL}/_sandbox/{INSTANCE}/payments/{failed.payment_id}/decline")
    res = cancel(failed.payment_id)
    assert res.result.result_status == ResultStatusType.F and res.result.result_code == "ORDER_STATUS_INVALID"
    # A paid one can, until 00:15 (UTC+8) the next day: the payer is refunded in full.
    paid = pay("PAY-" + uuid.uuid4().hex[:12], "400")
    control("POST", f"{CONTROL}/_sandbox/{INSTANCE}/payments/{paid.payment_id}/approve")
    res = cancel(paid.payment_id)
    assert res.result.result_status == ResultStatusType.S and res.cancel_time, res.result.result_code
    assert inquiry(payment_id=paid.payment_id).payment_status == TransactionStatusType.CANCELLED


def cancel(payment_id):
    c = AlipayPayCancelRequest()
    c.payment_id = payment_id
    return AlipayPayCancelResponse(client.execute(c))


def test_refund_and_inquiry_refund():
    _, payment_id = SHARED["paid"]
    r = AlipayRefundRequest()
    r.refund_request_id = "REF-" + uuid.uuid4().hex[:12]
    r.payment_id = payment_id
    r.refund_amount = Amount("HKD", "500")
    r.refund_reason = "test"
    r.refund_notify_url = NOTIFY_URL
    res = AlipayRefundResponse(client.execute(r))
    assert res.result.result_status == ResultStatusType.S, res.result.result_code
    assert res.refund_id and res.refund_time
    ir = AlipayInquiryRefundRequest()
    ir.refund_request_id = r.refund_request_id
    iref = AlipayInquiryRefundResponse(client.execute(ir))
    assert iref.result.result_status == ResultStatusType.S and iref.refund_id == res.refund_id
    assert iref.refund_status == TransactionStatusType.SUCCESS, iref.refund_status
    over = AlipayRefundRequest()
    over.refund_request_id = "REF-" + uuid.uuid4().hex[:12]
    over.payment_id = payment_id
    over.refund_amount = Amount("HKD", "600")
    res2 = AlipayRefundResponse(client.execute(over))
    assert res2.result.result_status == ResultStatusType.F and res2.result.result_code == "REFUND_AMOUNT_EXCEED"
    cb = wait_callback(
        WEBHOOK_DIR,
        lambda b: b.get("notifyType") == "REFUND_RESULT" and b.get("refundId") == res.refund_id,
        f"REFUND_RESULT for {res.refund_id}",
    )
    assert verify_notify(cb) is True
    assert json.loads(cb["body"])["refundStatus"] == "SUCCESS"
    # Refunded, it can no longer be cancelled.
    res = cancel(payment_id)
    assert res.result.result_status == ResultStatusType.F and res.result.result_code == "PROCESS_FAIL"


def test_business_errors():
    q = inquiry(prid="PAY-never-created")
    assert q.result.result_status == ResultStatusType.F and q.result.result_code == "ORDER_NOT_EXIST"
    req = pay_request("PAY-" + uuid.uuid4().hex[:12])
    req.payment_amount = Amount("HKD", 1000)  # a number, not a string of minor units
    bad = AlipayPayResponse(client.execute(req))
    assert bad.result.result_status == ResultStatusType.F and bad.result.result_code == "PARAM_ILLEGAL"


def test_wrong_merchant_key_is_refused():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    impostor = DefaultAlipayClient(GATEWAY, CLIENT_ID, base64.b64encode(der).decode(), PROVIDER_PUBLIC_KEY)
    res = AlipayPayResponse(impostor.execute(pay_request("PAY-" + uuid.uuid4().hex[:12])))
    assert res.result.result_status == ResultStatusType.F and res.result.result_code == "INVALID_SIGNATURE"
    stranger = DefaultAlipayClient(GATEWAY, "SANDBOX_SOMEONE_ELSE", MERCHANT_PRIVATE_KEY, PROVIDER_PUBLIC_KEY)
    res = AlipayPayResponse(stranger.execute(pay_request("PAY-" + uuid.uuid4().hex[:12])))
    assert res.result.result_code == "CLIENT_INVALID", res.result.result_code


if __name__ == "__main__":
    run(globals())
