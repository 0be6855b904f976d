//! Field formats from the Blue Lobster OpenAPI document, checked by hand (no regex engine):
//! each function returns the pydantic-style error type and message on failure so that the
//! dialect can answer exactly as the spec's FastAPI server would.

pub type Check = Result<(), (&'static str, String)>;

pub const NAME_PATTERN: &str = "^[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]$";
pub const USERNAME_PATTERN: &str = "^[a-zA-Z][a-zA-Z0-9-]*$";
pub const PASSWORD_PATTERN: &str = "^[^ \"'`;|<>{}\\\\]*$";
pub const SSH_KEY_PATTERN: &str = "^(ssh-rsa|ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/]+[=]{0,3}( .+)?$";
pub const TEMPLATE_PATTERN: &str = "^[A-Z0-9-]+$";

fn pattern_mismatch(p: &str) -> (&'static str, String) {
    (
        "string_pattern_mismatch",
        format!("String should match pattern '{p}'"),
    )
}

pub fn length(s: &str, min: usize, max: usize) -> Check {
    let n = s.chars().count();
    if n < min {
        let unit = if min == 1 { "character" } else { "characters" };
        return Err((
            "string_too_short",
            format!("String should have at least {min} {unit}"),
        ));
    }
    if n > max {
        return Err((
            "string_too_long",
            format!("String should have at most {max} characters"),
        ));
    }
    Ok(())
}

/// Instance hostname: `^[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]$`, at most 64 characters.
pub fn instance_name(s: &str) -> Check {
    length(s, 1, 64)?;
    let b = s.as_bytes();
    let ok = b.len() >= 2
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(pattern_mismatch(NAME_PATTERN))
    }
}

/// Rename rule: 3-64 characters of letters, digits, hyphen and underscore.
pub fn display_name(s: &str) -> bool {
    (3..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

pub fn username(s: &str) -> Check {
    length(s, 1, 32)?;
    let b = s.as_bytes();
    if b[0].is_ascii_alphabetic() && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        Ok(())
    } else {
        Err(pattern_mismatch(USERNAME_PATTERN))
    }
}

pub fn password(s: &str) -> Check {
    length(s, 8, 64)?;
    const BAD: &[char] = &[' ', '"', '\'', '`', ';', '|', '<', '>', '{', '}', '\\'];
    if s.chars().any(|c| BAD.contains(&c)) {
        Err(pattern_mismatch(PASSWORD_PATTERN))
    } else {
        Ok(())
    }
}

pub fn ssh_key(s: &str) -> Check {
    if ssh_key_matches(s) {
        Ok(())
    } else {
        Err(pattern_mismatch(SSH_KEY_PATTERN))
    }
}

fn ssh_key_matches(s: &str) -> bool {
    const ALGOS: &[&str] = &[
        "ssh-rsa",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
    ];
    let Some((algo, rest)) = s.split_once(' ') else {
        return false;
    };
    if !ALGOS.contains(&algo) {
        return false;
    }
    // The body runs to the next space; the optional comment after it is `.+` (no newlines).
    let (body, comment) = match rest.split_once(' ') {
        Some((b, c)) => (b, Some(c)),
        None => (rest, None),
    };
    let data = body.trim_end_matches('=');
    let pad = body.len() - data.len();
    let body_ok = !data.is_empty()
        && pad <= 3
        && data
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/');
    let comment_ok = comment.is_none_or(|c| !c.is_empty() && !c.contains(['\n', '\r']));
    body_ok && comment_ok
}

pub fn template_name(s: &str) -> Check {
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'-')
    {
        Ok(())
    } else {
        Err(pattern_mismatch(TEMPLATE_PATTERN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names() {
        assert!(instance_name("my-gpu-instance").is_ok());
        assert!(instance_name("a1").is_ok());
        assert!(instance_name("a").is_err(), "pattern needs two characters");
        assert!(instance_name("-ab").is_err());
        assert!(instance_name("ab-").is_err());
        assert!(instance_name("a_b").is_err());
        assert_eq!(instance_name("").unwrap_err().0, "string_too_short");
        assert_eq!(
            instance_name(&"a".repeat(65)).unwrap_err().0,
            "string_too_long"
        );
        assert!(instance_name(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn display_names() {
        assert!(display_name("my_prod-1"));
        assert!(!display_name("ab"));
        assert!(!display_name("has space"));
        assert!(!display_name(&"x".repeat(65)));
    }

    #[test]
    fn usernames() {
        assert!(username("ubuntu").is_ok());
        assert!(username("Admin-2").is_ok());
        assert!(username("2admin").is_err());
        assert!(username("").is_err());
        assert!(username(&"a".repeat(33)).is_err());
    }

    #[test]
    fn passwords() {
        assert!(password("K8#mP2$nX9@vL4qR").is_ok());
        assert_eq!(password("short").unwrap_err().0, "string_too_short");
        assert!(password("has space in it").is_err());
        assert!(password("semi;colon").is_err());
        assert!(password("back\\slash").is_err());
    }

    #[test]
    fn ssh_keys() {
        assert!(ssh_key("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAB").is_ok());
        assert!(ssh_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI== user@host").is_ok());
        assert!(ssh_key("ssh-ed25519 AAAA====").is_err());
        assert!(ssh_key("ssh-dss AAAA").is_err());
        assert!(ssh_key("ssh-rsa").is_err());
        assert!(ssh_key("ssh-rsa AAAA ").is_err());
        assert!(ssh_key("ssh-rsa AA!A").is_err());
        assert!(ssh_key("ssh-rsa AAAA c\nd").is_err());
    }

    #[test]
    fn templates() {
        assert!(template_name("UBUNTU-22-04-NV").is_ok());
        assert!(template_name("ubuntu").is_err());
        assert!(template_name("").is_err());
    }
}
