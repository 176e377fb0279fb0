//! Secrets never reach output: every writer of stdout, stderr and the log file passes its text
//! through [`redact`], and so does every error stored in the tracking collection. It hides
//! passwords and sensitive option values of anything shaped like a URI, and every secret
//! [`register_secrets`] learnt from the connection string in use.

use std::sync::RwLock;

/// Secrets of the connection string in use, hidden wherever they appear, even out of a URI.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Secrets shorter than this are only hidden where their shape shows them (a URI's user-info, a
/// sensitive option): hiding every occurrence of two letters would garble all output.
const MIN_LOOSE_SECRET: usize = 3;

/// Remembers the password and sensitive option values of `uri`, so [`redact`] hides them
/// anywhere in a text, even where a driver message quotes them out of their URI.
pub fn register_secrets(uri: &str) {
    let mut found = Vec::new();
    for span in secret_spans(uri) {
        found.push(uri[span].to_string());
    }
    // Without a scheme the URI-shape scan finds nothing; its user-info is still a secret.
    if let Some(at) = uri.rfind('@') {
        let userinfo = uri[..at].rsplit("//").next().unwrap_or(&uri[..at]);
        if let Some((_, password)) = userinfo.split_once(':') {
            found.push(password.to_string());
        }
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for secret in found {
        for form in [percent_decode(&secret), secret] {
            if form.len() >= MIN_LOOSE_SECRET && form != "***" && !secrets.contains(&form) {
                secrets.push(form);
            }
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every secret replaced by `***`: the password (user-info) of anything that looks
/// like a URI (`scheme://`, `scheme:/`, `mongodb:`), the value of every sensitive option
/// (`tlsCertificateKeyFilePassword=`, `authMechanismProperties=`, any `...password=`,
/// `...secret=`, `...token=`), and every secret registered by [`register_secrets`]. The user
/// name stays, so `mongodb://admin:pw@h/db` reads `mongodb://admin:***@h/db`. Output and log
/// writers pass everything through it.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for span in secret_spans(text) {
        out.push_str(&text[last..span.start]);
        out.push_str("***");
        last = span.end;
    }
    out.push_str(&text[last..]);
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// Where a token of free text ends: a URI or an option value never spans these.
fn ends_token(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-')
}

/// Byte ranges of the secrets in `text`, in order and disjoint.
fn secret_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = user_info_spans(text);
    spans.extend(option_value_spans(text));
    spans.sort_by_key(|s| s.start);
    let mut merged: Vec<std::ops::Range<usize>> = Vec::new();
    for span in spans {
        match merged.last_mut() {
            Some(prev) if span.start <= prev.end => prev.end = prev.end.max(span.end),
            _ => merged.push(span),
        }
    }
    merged
}

/// The password part of the user-info of every URI-like token. The user-info runs to the
/// token's last `@`, so a password holding `/`, `?` or `@` is still hidden whole (at worst a
/// query value holding `@` hides a little more than needed).
fn user_info_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(colon) = text[from..].find(':').map(|i| from + i) {
        from = colon + 1;
        let scheme_start = text[..colon]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_scheme_char(*c))
            .last()
            .map(|(i, _)| i)
            .unwrap_or(colon);
        let scheme = &text[scheme_start..colon];
        if !scheme.starts_with(|c: char| c.is_ascii_alphabetic()) {
            continue;
        }
        let after = &text[colon + 1..];
        let slashes = after.len() - after.trim_start_matches('/').len();
        if slashes == 0 && !scheme.to_ascii_lowercase().starts_with("mongodb") {
            continue;
        }
        let start = colon + 1 + slashes;
        let end = text[start..]
            .find(ends_token)
            .map_or(text.len(), |i| start + i);
        from = end.max(from);
        let token = &text[start..end];
        let Some(at) = token.rfind('@') else {
            continue;
        };
        let Some(sep) = token[..at].find(':') else {
            continue; // a user name alone, no password
        };
        if &token[sep + 1..at] != "***" {
            spans.push(start + sep + 1..start + at);
        }
    }
    spans
}

/// An option whose value is a secret (URI options are case-insensitive).
fn is_sensitive_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key == "authmechanismproperties"
        || key == "pwd"
        || ["password", "passwd", "secret", "token", "credential"]
            .iter()
            .any(|s| key.contains(s))
}

/// The values of `key=value` pairs whose key is sensitive, up to `&` or the token's end.
fn option_value_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    for (eq, _) in text.match_indices('=') {
        let key_start = text[..eq]
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_ascii_alphanumeric() || *c == '_')
            .last()
            .map_or(eq, |(i, _)| i);
        if !is_sensitive_option(&text[key_start..eq]) {
            continue;
        }
        let start = eq + 1;
        let end = text[start..]
            .find(|c: char| c == '&' || ends_token(c))
            .map_or(text.len(), |i| start + i);
        if start < end && &text[start..end] != "***" {
            spans.push(start..end);
        }
    }
    spans
}

/// `%XX` escapes decoded, as the driver sees a URI's password (invalid escapes kept as they are).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            redact("mongodb://u:secret@h:1/db?x=1"),
            "mongodb://u:***@h:1/db?x=1"
        );
        assert_eq!(redact("mongodb://h:1/db"), "mongodb://h:1/db");
        assert_eq!(
            redact("mongodb+srv://u:p%40ss@c.example/db"),
            "mongodb+srv://u:***@c.example/db"
        );
    }

    #[test]
    fn redact_hides_passwords_of_every_uri_shape_inside_any_text() {
        let cases = [
            // A scheme typo: one slash.
            (
                "MONGODB_URI mongodb:/u:pw1@127.0.0.1:27017/db is bad",
                "MONGODB_URI mongodb:/u:***@127.0.0.1:27017/db is bad",
            ),
            // No slash at all.
            ("uri=mongodb:u:pw2@h/db", "uri=mongodb:u:***@h/db"),
            // A password holding `/`, `?` and `@`.
            (
                "cannot connect to mongodb://admin:se/c?r@t@host/db: refused",
                "cannot connect to mongodb://admin:***@host/db: refused",
            ),
            // Another scheme, quoted, two URIs in one line.
            (
                r#"a "http://x:pw3@h/" and 'mongodb://y:pw4@h2'"#,
                r#"a "http://x:***@h/" and 'mongodb://y:***@h2'"#,
            ),
            // A user name alone has no password to hide.
            ("mongodb://x509user@h/db", "mongodb://x509user@h/db"),
            // Host and port are not user-info.
            ("mongodb://h:27017/db", "mongodb://h:27017/db"),
            (
                "at 127.0.0.1:27017 and localhost:1",
                "at 127.0.0.1:27017 and localhost:1",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
    }

    #[test]
    fn redact_hides_sensitive_options_in_and_out_of_uris() {
        assert_eq!(
            redact("mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=pw5&appName=x"),
            "mongodb://h/db?tls=true&tlsCertificateKeyFilePassword=***&appName=x"
        );
        assert_eq!(
            redact("mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:tok6,SERVICE_NAME:s"),
            "mongodb://h/db?authMechanism=MONGODB-AWS&authMechanismProperties=***"
        );
        assert_eq!(
            redact("TLSCERTIFICATEKEYFILEPASSWORD=pw7 proxyPassword=pw8 sslPEMKeyPassword=pw9"),
            "TLSCERTIFICATEKEYFILEPASSWORD=*** proxyPassword=*** sslPEMKeyPassword=***"
        );
        assert_eq!(redact("batchSize=7 tls=true"), "batchSize=7 tls=true");
    }

    #[test]
    fn redact_is_idempotent() {
        let once = redact("mongodb://u:pw10@h/db?tlsCertificateKeyFilePassword=pw11");
        assert_eq!(redact(&once), once);
        assert_eq!(
            once,
            "mongodb://u:***@h/db?tlsCertificateKeyFilePassword=***"
        );
    }

    #[test]
    fn registered_secrets_are_hidden_wherever_they_appear() {
        register_secrets("mongodb://u:Reg%2FPw12@h/db?tlsCertificateKeyFilePassword=RegPw13");
        assert_eq!(
            redact("auth failed for Reg/Pw12 and Reg%2FPw12; key RegPw13"),
            "auth failed for *** and ***; key ***"
        );
        // Without a scheme the user-info is still known to be a secret.
        register_secrets("u:RegPw14@h/db");
        assert_eq!(redact("got u:RegPw14@h/db"), "got u:***@h/db");
    }
}
