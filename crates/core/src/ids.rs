//! Identifiers. Instances use UUID text (clients call the field `uuid`); tasks and keys
//! carry a readable prefix. All randomness comes from the OS-seeded thread RNG.
//!
//! Instance and task ids lead with the time they were made (UUID version 7; a task id's
//! first twelve hex digits): each is a primary key, and an instance's is also the key of its
//! address and the tail of its generated name, so time-ordered ids make every insert land at
//! the right-hand end of those indexes instead of on a random page. Measured on SQLite, a
//! batch of launches then writes a handful of pages instead of one per index per launch
//! (docs/benchmarks.md, session 9); PostgreSQL's B-trees gain the same way. The ids stay
//! unguessable (74 random bits in an instance id, 48 in a task id).

use rand::RngCore;

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// A random RFC 4122 version 4 UUID in its canonical text form.
pub fn new_uuid() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    dashed(&hex(&b))
}

fn dashed(h: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// An RFC 9562 version 7 UUID: 48 bits of Unix milliseconds, then random bits.
pub fn new_time_uuid() -> String {
    time_uuid_at(unix_millis())
}

fn time_uuid_at(ms: u64) -> String {
    let mut b = random_bytes::<16>();
    b[..6].copy_from_slice(&be48(ms));
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    dashed(&hex(&b))
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn be48(ms: u64) -> [u8; 6] {
    let be = ms.to_be_bytes();
    [be[2], be[3], be[4], be[5], be[6], be[7]]
}

pub fn new_instance_id() -> String {
    new_time_uuid()
}

/// `task_` and 24 hex digits: the time in milliseconds, then 48 random bits.
pub fn new_task_id() -> String {
    task_id_at(unix_millis())
}

fn task_id_at(ms: u64) -> String {
    let mut b = random_bytes::<12>();
    b[..6].copy_from_slice(&be48(ms));
    format!("task_{}", hex(&b))
}

pub fn new_account_id() -> String {
    format!("acc_{}", hex(&random_bytes::<8>()))
}

pub fn new_team_id() -> String {
    new_uuid()
}

pub fn new_key_id() -> String {
    format!("key_{}", hex(&random_bytes::<8>()))
}

/// A fresh API key secret: 192 random bits, `lob_` prefixed (the LobstaCloud key format, which
/// Blue Lobster clients accept as an opaque string).
pub fn new_api_key_secret() -> String {
    format!("lob_{}", hex(&random_bytes::<24>()))
}

/// A random password of `len` characters from a set that satisfies the spec's password
/// pattern (no space, quotes, backtick, `;|<>{}` or backslash) and mixes classes.
pub fn new_password(len: usize) -> String {
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const DIGIT: &[u8] = b"23456789";
    const SYM: &[u8] = b"#$%@!*+=-_";
    let sets: [&[u8]; 4] = [LOWER, UPPER, DIGIT, SYM];
    let mut rng = rand::thread_rng();
    let mut out: Vec<u8> = (0..len)
        .map(|i| {
            let set = sets[if i < 4 {
                i
            } else {
                (rng.next_u32() % 4) as usize
            }];
            set[(rng.next_u32() as usize) % set.len()]
        })
        .collect();
    // Shuffle so the guaranteed classes are not always in the first four places.
    for i in (1..out.len()).rev() {
        let j = (rng.next_u32() as usize) % (i + 1);
        out.swap(i, j);
    }
    String::from_utf8(out).expect("ascii")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_version_4() {
        let u = new_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, new_uuid());
    }

    #[test]
    fn instance_and_task_ids_lead_with_the_time_and_sort_by_it() {
        let u = new_instance_id();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "7");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        let ms = u64::from_str_radix(&u[..13].replace('-', ""), 16).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(ms <= now && now - ms < 60_000, "{u} is not now");
        // Made a millisecond apart, ids sort in the order they were made.
        let (t1, i1) = (task_id_at(now), time_uuid_at(now));
        let (t2, i2) = (task_id_at(now + 1), time_uuid_at(now + 1));
        assert!(t1 < t2 && i1 < i2);
        assert_eq!(t1.len(), "task_".len() + 24);
        assert_ne!(new_instance_id(), new_instance_id());
    }

    #[test]
    fn password_has_every_class_and_valid_chars() {
        for _ in 0..50 {
            let p = new_password(16);
            assert_eq!(p.len(), 16);
            assert!(p.chars().any(|c| c.is_ascii_lowercase()));
            assert!(p.chars().any(|c| c.is_ascii_uppercase()));
            assert!(p.chars().any(|c| c.is_ascii_digit()));
            assert!(crate::validate::password(&p).is_ok());
        }
    }

    #[test]
    fn key_has_at_least_128_bits() {
        let k = new_api_key_secret();
        assert!(k.starts_with("lob_"));
        assert_eq!(k.len() - 4, 48); // 24 bytes of randomness in hex
    }
}
