//! The deterministic id of an anonymous contact.
//!
//! The id is `anon-` followed by the first 16 bytes, in lower-case hex, of the SHA-256 of
//! a length-prefixed encoding of the contact field's key:
//!
//! ```text
//! u64 LE byte length of app_code ‖ app_code (UTF-8) ‖ i64 LE contact_field_id
//! ‖ u64 LE byte length of contact_field_value ‖ contact_field_value (UTF-8)
//! ```
//!
//! so `("APP1", 100, "visitor-7f3a")` is `anon-9f70d774465835ba4051371d1b88a28d`, in any
//! process, on any platform, with any Rust release (in Python:
//! `"anon-" + hashlib.sha256(enc).hexdigest()[:32]`). The length prefixes make the encoding
//! injective, and a cryptographic hash means nobody can choose a field value whose id
//! collides with another contact's: the value is often user-controlled, and a collision
//! would merge two people's anonymous contacts. 128 bits keep accidental collisions out of
//! reach for any realistic number of contacts.

/// The id of the anonymous contact created for the contact field
/// (`app_code`, `field_id`, `value`); see the module documentation for the algorithm.
pub fn anonymous_contact_id(app_code: &str, field_id: i64, value: &str) -> String {
    let mut input = Vec::with_capacity(24 + app_code.len() + value.len());
    input.extend_from_slice(&(app_code.len() as u64).to_le_bytes());
    input.extend_from_slice(app_code.as_bytes());
    input.extend_from_slice(&field_id.to_le_bytes());
    input.extend_from_slice(&(value.len() as u64).to_le_bytes());
    input.extend_from_slice(value.as_bytes());
    let digest = sha256(&input);
    let mut id = String::with_capacity(5 + 32);
    id.push_str("anon-");
    for byte in &digest[..16] {
        id.push(hex_digit(byte >> 4));
        id.push(hex_digit(byte & 0xf));
    }
    id
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0xf)])
}

/// SHA-256 round constants (FIPS 180-4, 4.2.2).
const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// SHA-256 (FIPS 180-4) of `message`.
fn sha256(message: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ];
    // Padding: a one bit, zeros up to 56 bytes mod 64, and the bit length (big-endian).
    let mut padded = message.to_vec();
    padded.push(0x80);
    while padded.len() % 64 != 56 {
        padded.push(0);
    }
    padded.extend_from_slice(&((message.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in padded.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (word, bytes) in w.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (state, v) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *state = state.wrapping_add(v);
        }
    }
    let mut out = [0u8; 32];
    for (bytes, word) in out.chunks_exact_mut(4).zip(h) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sha256_matches_the_fips_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        // A message of exactly one block's payload forces a second padding block.
        assert_eq!(
            hex(&sha256(&[b'a'; 64])),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb"
        );
    }

    #[test]
    fn anonymous_ids_are_stable_and_distinguish_every_part() {
        assert_eq!(
            anonymous_contact_id("APP1", 100, "visitor-7f3a"),
            "anon-9f70d774465835ba4051371d1b88a28d"
        );
        assert_eq!(
            anonymous_contact_id("A", 1, "x"),
            "anon-d2defc4f28faeddeb471f484515372f2"
        );
        // The length prefixes keep shifted boundaries apart.
        assert_ne!(anonymous_contact_id("AB", 1, "C"), anonymous_contact_id("A", 1, "BC"));
        assert_ne!(anonymous_contact_id("A", 1, "x"), anonymous_contact_id("A", 2, "x"));
    }
}
