//! The tiny HTML pages the simulators' redirect URLs lead to (an AlipayHK cashier, a 3-D
//! Secure challenge), with buttons that post the payer's choice back to the simulator.

use super::http::Response;

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page with a title, a table of facts and one form (POST) button per action.
pub(crate) fn page(title: &str, rows: &[(&str, String)], actions: &[(&str, String)]) -> Response {
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
<meta name=\"viewport\" content=\"width=device-width\"></head>\
<body style=\"font-family:sans-serif;max-width:28em;margin:2em auto\"><h1>{t}</h1><table>",
        t = esc(title)
    );
    for (k, v) in rows {
        html.push_str(&format!("<tr><th align=\"left\">{}</th><td>{}</td></tr>", esc(k), esc(v)));
    }
    html.push_str("</table>");
    for (label, action) in actions {
        html.push_str(&format!(
            "<form method=\"post\" action=\"{}\" style=\"display:inline-block;margin:1em 1em 0 0\">\
<button type=\"submit\">{}</button></form>",
            esc(action),
            esc(label)
        ));
    }
    html.push_str("<p><small>paymux sandbox: a local simulator, no real money moves.</small></p></body></html>");
    Response::html(200, html)
}

/// Appends query pairs to a URL that may already have a query.
pub(crate) fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", s.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_builds_forms() {
        assert_eq!(esc("<a href='x'>&\""), "&lt;a href=&#39;x&#39;&gt;&amp;&quot;");
        let r = page("Pay <me>", &[("Amount", "HKD 10.00".into())], &[("Approve", "/pay/1/approve".into())]);
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        assert!(body.contains("<title>Pay &lt;me&gt;</title>"));
        assert!(body.contains("action=\"/pay/1/approve\""));
        assert_eq!(with_query("https://a/b?x=1", &[("s", "a b")]), "https://a/b?x=1&s=a+b");
        assert_eq!(with_query("https://a/b", &[("s", "1")]), "https://a/b?s=1");
    }
}
