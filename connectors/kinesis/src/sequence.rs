//! Kinesis sequence numbers: decimal strings of up to 186 bits that increase within a shard.

use std::cmp::Ordering;

/// Compares two sequence numbers as the unsigned integers they spell.
///
/// Kinesis documents them only as increasing decimal strings, so they are compared as
/// numbers (by length without leading zeros, then digit by digit), never as text alone.
pub fn compare(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A sequence number as a 192-bit integer (three 64-bit limbs, least significant first), or
/// `None` if it is not a decimal number of at most 192 bits.
fn parse_u192(s: &str) -> Option<[u64; 3]> {
    if s.is_empty() {
        return None;
    }
    let mut n = [0u64; 3];
    for c in s.bytes() {
        let digit = u64::from(c.checked_sub(b'0').filter(|d| *d < 10)?);
        // n = n * 10 + digit, limb by limb.
        let mut carry = u128::from(digit);
        for limb in &mut n {
            let v = u128::from(*limb) * 10 + carry;
            *limb = v as u64;
            carry = v >> 64;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(n)
}

/// The record ordinal sluice uses for a sequence number: `RawRecord::offset`, which orders
/// records within a shard, names them in dead letters and feeds delivery ids, so it must be
/// derived from the record alone (the same after a restart) and increase within the shard.
///
/// Kinesis sequence numbers do not fit in 64 bits. Those of the current layout (186 bits:
/// a version nibble `2` at both ends, the shard's creation time, a 64-bit sequence index,
/// the arrival second and the shard index — what AWS issues and kinesalite imitates) carry
/// the record's **sequence index** in bits 80..144, which increases record by record within
/// a shard and comes before every other changing field, so it orders records as their
/// sequence numbers do. Any other number (an older layout, a test double) falls back to its
/// low 64 bits, exact for numbers below 2^64.
pub fn ordinal(seq: &str) -> u64 {
    let Some(n) = parse_u192(seq) else {
        return fallback(seq);
    };
    let version_2 = n[2] >> 56 == 2 && n[0] & 0xf == 2;
    if version_2 {
        (n[1] >> 16) | ((n[2] & 0xffff) << 48)
    } else {
        n[0]
    }
}

/// A stable hash, for strings that are not numbers at all.
fn fallback(s: &str) -> u64 {
    sluice_runtime::source::stable_hash(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_as_numbers() {
        assert_eq!(compare("9", "10"), Ordering::Less);
        assert_eq!(compare("0010", "10"), Ordering::Equal);
        assert_eq!(compare("123", "122"), Ordering::Greater);
        assert_eq!(
            compare(
                "49590338271490256608559692538361571095921575989136588898",
                "49590338271490256608559692540925702759324208523137515618"
            ),
            Ordering::Less
        );
    }

    #[test]
    fn parses_up_to_192_bits() {
        assert_eq!(parse_u192("0"), Some([0, 0, 0]));
        assert_eq!(parse_u192("18446744073709551616"), Some([0, 1, 0]));
        assert_eq!(parse_u192("12a"), None);
        assert_eq!(parse_u192(""), None);
        // 2^192 does not fit.
        assert_eq!(
            parse_u192("6277101735386680763835789423207666416102355444464034512896"),
            None
        );
    }

    /// A version-2 sequence number built from its fields, as kinesalite's `stringifySequence`.
    fn v2(create_secs: u64, seq_ix: u64, seq_secs: u64, shard_ix: u32) -> String {
        let hex = format!(
            "2{create_secs:09x}{:x}{seq_ix:016x}00{seq_secs:09x}{shard_ix:08x}2",
            shard_ix & 0xf
        );
        // Hex to decimal through the 192-bit limbs.
        let mut n = [0u64; 3];
        for c in hex.chars() {
            let d = u64::from(c.to_digit(16).unwrap_or(0));
            let mut carry = d;
            for limb in &mut n {
                let v = (u128::from(*limb) << 4) | u128::from(carry);
                *limb = v as u64;
                carry = (v >> 64) as u64;
            }
        }
        let mut digits = Vec::new();
        while n != [0, 0, 0] {
            let mut rem = 0u128;
            for limb in n.iter_mut().rev() {
                let v = (rem << 64) | u128::from(*limb);
                *limb = (v / 10) as u64;
                rem = v % 10;
            }
            digits.push(char::from(b'0' + rem as u8));
        }
        digits.iter().rev().collect()
    }

    #[test]
    fn the_ordinal_of_a_version_2_number_is_its_sequence_index() {
        let a = v2(1_700_000_000, 7, 1_700_000_100, 1);
        assert_eq!(a.len(), 56, "{a}");
        assert_eq!(ordinal(&a), 7);
        // Same second, next record: the index grows even when the time does not.
        let b = v2(1_700_000_000, 8, 1_700_000_100, 1);
        assert!(ordinal(&b) > ordinal(&a));
        assert_eq!(compare(&a, &b), Ordering::Less);
        // A large index keeps its high bits.
        let c = v2(1_700_000_000, 0x7fff_0000_0000_0001, 1_700_000_200, 3);
        assert_eq!(ordinal(&c), 0x7fff_0000_0000_0001);
    }

    #[test]
    fn the_ordinal_of_another_number_is_its_low_bits() {
        assert_eq!(ordinal("42"), 42);
        assert_eq!(ordinal("not a number"), ordinal("not a number"));
        assert_ne!(ordinal("not a number"), ordinal("not a numbe"));
    }

    #[test]
    fn a_real_aws_sequence_number_has_the_version_2_layout() {
        // From AWS documentation examples.
        let s = "49590338271490256608559692538361571095921575989136588898";
        let n = parse_u192(s).unwrap_or_default();
        assert_eq!(n[2] >> 56, 2);
        assert_eq!(n[0] & 0xf, 2);
    }
}
