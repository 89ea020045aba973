//! A client certificate's identities: the DNS and URI names of its subject
//! alternative names (a SPIFFE id is a URI name), or, only in a certificate
//! with neither, its subject common name.
//!
//! The common name is ignored whenever the certificate presents a DNS or
//! URI SAN, as RFC 6125 (6.4.4) requires: a CA checks and constrains the
//! SANs it signs, while the subject is often copied from the request
//! unchecked, so a certificate issued for `unlisted.internal` must not get
//! in because its CN says `orders.internal`. Presence is judged on the raw
//! SAN entries, not only on those webpki accepts as valid names, so a
//! malformed DNS SAN does not bring the CN back into play.
//!
//! The certificate is read with rustls-webpki, the parser rustls verified
//! its chain with; only what webpki does not expose (the common name, and
//! whether a DNS or URI SAN is present at all) is read here from the DER,
//! by a reader that gives up on anything unexpected: no name, and a
//! certificate it cannot read is taken to present a SAN.

use rustls::pki_types::CertificateDer;

/// The DER of the common name attribute's type, 2.5.4.3.
const COMMON_NAME_OID: &[u8] = &[0x55, 0x04, 0x03];
/// The DER of the subject alternative name extension's type, 2.5.29.17.
const SUBJECT_ALT_NAME_OID: &[u8] = &[0x55, 0x1d, 0x11];

const TAG_BOOLEAN: u8 = 0x01;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_PRINTABLE_STRING: u8 = 0x13;
const TAG_IA5_STRING: u8 = 0x16;
/// A TBSCertificate's `extensions [3] EXPLICIT`.
const TAG_EXTENSIONS: u8 = 0xa3;
/// GeneralName's `dNSName [2] IA5String` and
/// `uniformResourceIdentifier [6] IA5String`, implicitly tagged.
const TAG_SAN_DNS_NAME: u8 = 0x82;
const TAG_SAN_URI: u8 = 0x86;

/// Returns the names a certificate identifies its holder by: its SAN DNS
/// names and SAN URIs, or, when it presents neither kind of SAN, its
/// subject common names. Empty when the certificate cannot be parsed.
pub fn certificate_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    let Ok(parsed) = webpki::EndEntityCert::try_from(certificate) else {
        return Vec::new();
    };
    let mut names: Vec<String> = parsed
        .valid_dns_names()
        .chain(parsed.valid_uri_names())
        .map(str::to_owned)
        .collect();
    if names.is_empty() && presents_dns_or_uri_san(certificate) == Some(false) {
        names.extend(common_names(parsed.subject()));
    }
    names
}

/// Returns whether the certificate's subject alternative names hold a DNS
/// name or a URI, valid or not; `None` when its DER cannot be read.
fn presents_dns_or_uri_san(der: &[u8]) -> Option<bool> {
    let (TAG_SEQUENCE, certificate, _) = read_tlv(der)? else {
        return None;
    };
    let (TAG_SEQUENCE, mut tbs, _) = read_tlv(certificate)? else {
        return None;
    };
    // The extensions come last in the TBSCertificate, and are optional.
    let tagged_extensions = loop {
        let Some((tag, value, rest)) = read_tlv(tbs) else {
            return tbs.is_empty().then_some(false);
        };
        if tag == TAG_EXTENSIONS {
            break value;
        }
        tbs = rest;
    };
    let (TAG_SEQUENCE, mut extensions, _) = read_tlv(tagged_extensions)? else {
        return None;
    };
    while !extensions.is_empty() {
        let (TAG_SEQUENCE, extension, rest) = read_tlv(extensions)? else {
            return None;
        };
        extensions = rest;
        let (TAG_OID, oid, mut after_oid) = read_tlv(extension)? else {
            return None;
        };
        if oid != SUBJECT_ALT_NAME_OID {
            continue;
        }
        if let Some((TAG_BOOLEAN, _, after_critical)) = read_tlv(after_oid) {
            after_oid = after_critical;
        }
        let (TAG_OCTET_STRING, extension_value, _) = read_tlv(after_oid)? else {
            return None;
        };
        let (TAG_SEQUENCE, mut general_names, _) = read_tlv(extension_value)? else {
            return None;
        };
        while !general_names.is_empty() {
            let (tag, _, rest) = read_tlv(general_names)?;
            if tag == TAG_SAN_DNS_NAME || tag == TAG_SAN_URI {
                return Some(true);
            }
            general_names = rest;
        }
    }
    Some(false)
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
    fn names_come_from_the_sans_and_the_common_name_only_without_them() {
        let with_sans = certificate(
            Some("orders-api"),
            vec![
                SanType::DnsName("orders.internal".try_into().unwrap()),
                SanType::URI("spiffe://example.org/orders".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
        );
        assert_eq!(
            certificate_names(&with_sans),
            ["orders.internal", "spiffe://example.org/orders"],
            "the CN is ignored beside DNS and URI SANs"
        );
        let uri_only = certificate(
            Some("orders-api"),
            vec![SanType::URI(
                "spiffe://example.org/orders".try_into().unwrap(),
            )],
        );
        assert_eq!(
            certificate_names(&uri_only),
            ["spiffe://example.org/orders"]
        );

        // No SAN, or only kinds that are never matched (an IP address):
        // the CN is the identity.
        assert_eq!(
            certificate_names(&certificate(Some("orders-api"), Vec::new())),
            ["orders-api"]
        );
        let ip_only = certificate(
            Some("orders-api"),
            vec![SanType::IpAddress([127, 0, 0, 1].into())],
        );
        assert_eq!(certificate_names(&ip_only), ["orders-api"]);
    }

    #[test]
    fn a_malformed_dns_san_still_hides_the_common_name() {
        // webpki does not take "not a dns name!" as a DNS name, but it is
        // a DNS SAN all the same.
        let certificate = certificate(
            Some("orders-api"),
            vec![SanType::DnsName("not a dns name!".try_into().unwrap())],
        );
        assert_eq!(presents_dns_or_uri_san(&certificate), Some(true));
        assert!(certificate_names(&certificate).is_empty());
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
