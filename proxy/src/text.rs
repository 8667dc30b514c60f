//! Number and address formatting for the request path and the access log, without the
//! `fmt` machinery, which costs more per request than the rest of the header work.

use std::net::IpAddr;

/// Appends `n` in decimal, as one slice (one capacity check, not one per digit).
pub fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

/// Appends `n` with at least `width` digits, zero-padded.
pub fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut len = 1;
    let mut rest = n / 10;
    while rest > 0 {
        len += 1;
        rest /= 10;
    }
    for _ in len..width {
        out.push('0');
    }
    push_u64(out, n);
}

/// Appends an IP address in its usual text form.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            // At most 15 bytes: filled on the stack, appended once.
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let (h, t, o) = (octet / 100, octet / 10 % 10, octet % 10);
                if h > 0 {
                    text[len] = b'0' + h;
                    len += 1;
                }
                if h > 0 || t > 0 {
                    text[len] = b'0' + t;
                    len += 1;
                }
                text[len] = b'0' + o;
                len += 1;
            }
            out.push_str(std::str::from_utf8(&text[..len]).expect("ASCII digits and dots"));
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_addresses_match_the_standard_forms() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        let mut s = String::new();
        push_padded(&mut s, 7, 3);
        push_padded(&mut s, 1234, 3);
        assert_eq!(s, "0071234");
        for ip in [
            "127.0.0.1",
            "255.255.255.255",
            "100.7.90.109",
            "10.20.255.0",
            "0.0.0.0",
            "192.168.100.9",
            "::1",
            "2001:db8::8:1",
        ] {
            let mut out = String::new();
            push_ip(&mut out, ip.parse().unwrap());
            assert_eq!(out, ip);
        }
    }
}
