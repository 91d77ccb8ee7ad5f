//! Writing the report's HTML: escaping text, inlining pictures as `data:` URIs so the page is one
//! self-contained file, and the page's frame (style, header, the load check).

use std::fmt::Write;

use base64::Engine as _;

/// `text` with the five characters that mean something in HTML replaced by entities.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A `data:` URI holding `bytes` of MIME type `mime`.
pub fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto;
       max-width: 1280px; padding: 0 24px 48px; color: #1d2330; background: #fff; }
h1 { margin: 24px 0 4px; }
h2 { margin-top: 40px; border-bottom: 2px solid #dfe3ea; padding-bottom: 4px; }
p.lead, p.note { color: #566074; margin: 4px 0 12px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #dfe3ea; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f3f5f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.nowrap { white-space: nowrap; }
code { font-family: ui-monospace, 'SFMono-Regular', Menlo, monospace; font-size: 90%; }
img.figure { max-width: 100%; border: 1px solid #dfe3ea; }
.maps { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.maps img { width: 100%; border: 1px solid #dfe3ea; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 14px; }
.card { border: 1px solid #dfe3ea; border-radius: 6px; padding: 8px; }
.card img { display: block; margin-bottom: 6px; }
.card dl { margin: 0; font-size: 14px; }
.card dt { color: #566074; font-size: 12px; text-transform: uppercase; margin-top: 4px; }
.card dd { margin: 0; }
.row { display: flex; gap: 10px; align-items: flex-start; flex-wrap: wrap; margin: 8px 0 18px; }
figure { margin: 0; text-align: center; font-size: 12px; color: #566074; }
figure.query { padding-right: 12px; border-right: 3px solid #dfe3ea; }
figure.hit img { outline: 4px solid #2e9e44; }
.missing { display: inline-block; background: #f3f5f9; color: #a33; font-size: 12px;
           padding: 8px; border: 1px dashed #a33; }
.computed { background: #ffd699; }
.reused { background: #c8e6c9; }
.this-page { background: #bbdefb; }
";

/// Checks, once the page has loaded, that every picture decoded, and records the counts on
/// `<body>` (`data-images`, `data-broken-images`) where a browser test can read them.
const LOAD_CHECK: &str = "
window.addEventListener('load', function () {
  var images = document.images, broken = 0;
  for (var i = 0; i < images.length; i++) {
    if (!images[i].complete || images[i].naturalWidth === 0) { broken++; }
  }
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-broken-images', String(broken));
});
";

/// The whole page around `body` (already HTML).
pub fn page(title: &str, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 4096);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n<script>{LOAD_CHECK}</script>\n</head>\n\
         <body>\n{body}\n</body>\n</html>\n",
        escape(title)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<b>"Tom" & 'Jerry'</b>"#),
            "&lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt;"
        );
        assert_eq!(escape("a dog runs"), "a dog runs");
    }

    #[test]
    fn data_uris_are_standard_base64() {
        assert_eq!(
            data_uri("text/plain", b"hi!"),
            "data:text/plain;base64,aGkh"
        );
        assert_eq!(data_uri("text/plain", b"hi"), "data:text/plain;base64,aGk=");
    }

    #[test]
    fn the_page_escapes_its_title_and_holds_the_body() {
        let html = page("a <report>", "<p>body</p>");
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>a &lt;report&gt;</title>"));
        assert!(html.contains("<p>body</p>"));
        assert!(html.contains("data-broken-images"));
    }
}
