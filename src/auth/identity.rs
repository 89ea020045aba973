//! A client certificate's identities: the DNS and URI names of its subject
//! alternative names (a SPIFFE id is a URI name) and its subject common
//! name.
//!
//! The certificate is read with rustls-webpki, the parser rustls verified
//! its chain with; only the common name, which webpki does not expose, is
//! read here from the subject's DER, by a reader that gives up (no name)
//! on anything unexpected.

use rustls::pki_types::CertificateDer;

/// The DER of the common name attribute's type, 2.5.4.3.
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];

const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_IA5_STRING: u8 = 0x16;

/// Returns the names a certificate identifies its holder by: SAN DNS
/// names, SAN URIs, then subject common names. Empty when the certificate
/// cannot be parsed.
pub fn certificate_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    let Ok(parsed) = webpki::EndEntityCert::try_from(certificate) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .valid_dns_names()
        .chain(parsed.valid_uri_names())
        .map(str::to_owned)
        .collect();
    names.extend(common_names(parsed.subject()));
    names
}

/// Returns the common names of a DER `Name`'s contents (the SEQUENCE OF
/// RelativeDistinguishedName without its own tag and length).
fn common_names(mut subject: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    while let Some((TAG_SET, mut rdn, rest)) = read_tlv(subject) {
        subject = rest;
        while let Some((TAG_SEQUENCE, attribute, rest)) = read_tlv(rdn) {
            rdn = rest;
            let Some((TAG_OID, oid, value)) = read_tlv(attribute) else {
                continue;
            };
            if oid != COMMON_NAME_OID {
                continue;
            }
            if let Some((TAG_UTF8_STRING | TAG_PRINTABLE_STRING | TAG_IA5_STRING, text, _)) =
                read_tlv(value)
                && let Ok(text) = std::str::from_utf8(text)
            {
                names.push(text.to_owned());
            }
        }
    }
    names
}

/// Splits one DER tag-length-value off `input`: returns the tag, the value
/// and what follows. `None` on a truncated input, a long-form tag, or an
/// indefinite or oversized length.
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let octets = usize::from(first & 0x7f);
        if octets == 0 || octets > 4 {
            return None;
        }
        let (length, rest) = rest.split_at_checked(octets)?;
        let length = length
            .iter()
            .fold(0usize, |length, &octet| length << 8 | usize::from(octet));
        (length, rest)
    };
    let (value, rest) = rest.split_at_checked(length)?;
    Some((tag, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    fn certificate(common_name: Option<&str>, sans: Vec<SanType>) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, "readstates tests");
        if let Some(common_name) = common_name {
            subject.push(DnType::CommonName, common_name);
        }
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn names_come_from_the_sans_and_the_common_name() {
        let certificate = certificate(
            Some("orders-api"),
            vec![
                SanType::DnsName("orders.internal".try_into().unwrap()),
                SanType::URI("spiffe://example.org/orders".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
        );
        assert_eq!(
            certificate_names(&certificate),
            [
                "orders.internal",
                "spiffe://example.org/orders",
                "orders-api"
            ]
        );
    }

    #[test]
    fn a_certificate_without_names_has_none() {
        assert!(certificate_names(&certificate(None, Vec::new())).is_empty());
        assert!(certificate_names(&CertificateDer::from(vec![0x30, 0x03, 0x02])).is_empty());
    }

    #[test]
    fn truncated_or_long_form_der_is_refused() {
        assert_eq!(read_tlv(&[0x04, 0x02, 0xaa]), None);
        assert_eq!(read_tlv(&[0x1f, 0x01, 0x00]), None);
        assert_eq!(read_tlv(&[0x04, 0x80]), None);
        assert_eq!(read_tlv(&[0x04, 0x85, 1, 1, 1, 1, 1]), None);
        let long = [&[0x04, 0x81, 0x80][..], &[7; 0x80]].concat();
        let (tag, value, rest) = read_tlv(&long).unwrap();
        assert_eq!((tag, value.len(), rest.len()), (0x04, 0x80, 0));
        assert!(common_names(&[0x31, 0x05, 0x30, 0x03, 0x06, 0x01]).is_empty());
    }
}
