//! Kubernetes' `$(VAR)` expansion in env values, command and args.
//!
//! The rules are the API's (see the `command` field's documentation): `$(NAME)` becomes the
//! variable's value when it is defined and stays as written when not; `$$` is an escaped `$`;
//! any other `$` is kept as is, as is an unterminated `$(`.

/// `input` with every defined `$(NAME)` replaced by `lookup(NAME)`.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(close) => {
                    let name = &body[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = body;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<&'static str> {
        match name {
            "HOST" => Some("10.0.0.1"),
            "PORT" => Some("443"),
            "EMPTY" => Some(""),
            _ => None,
        }
    }

    #[test]
    fn defined_variables_are_replaced() {
        assert_eq!(
            expand("https://$(HOST):$(PORT)/", vars),
            "https://10.0.0.1:443/"
        );
        assert_eq!(expand("a$(EMPTY)b", vars), "ab");
        assert_eq!(expand("$(HOST)$(HOST)", vars), "10.0.0.110.0.0.1");
    }

    #[test]
    fn undefined_variables_stay_as_written() {
        assert_eq!(expand("$(NOPE) and $(HOST)", vars), "$(NOPE) and 10.0.0.1");
    }

    #[test]
    fn escapes_and_stray_dollars() {
        assert_eq!(expand("$$(HOST)", vars), "$(HOST)");
        assert_eq!(expand("$$$(HOST)", vars), "$10.0.0.1");
        assert_eq!(expand("cost: 5$", vars), "cost: 5$");
        assert_eq!(expand("$HOST", vars), "$HOST");
        assert_eq!(expand("$(HOST", vars), "$(HOST");
        assert_eq!(expand("", vars), "");
    }
}
