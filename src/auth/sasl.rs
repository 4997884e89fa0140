//! SASL responses of `connection.start-ok`: the user name and password a client sends, for
//! the mechanisms Hare offers. No I/O and no state, so it is tested and fuzzed alone.
//!
//! - PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`; the authorisation identity is
//!   ignored, as RabbitMQ does. Missing parts are empty (and fail to log in).
//! - AMQPLAIN: a field table without its length prefix, with `LOGIN` and `PASSWORD`.
//! - EXTERNAL: the response is ignored; the user comes from the client's certificate.

use crate::types::codec::{CodecError, Decoder};
use bytes::{BufMut, Bytes, BytesMut};

/// What a response names: a user and a password (empty for EXTERNAL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SaslError {
    #[error("malformed AMQPLAIN response: {0}")]
    AmqPlain(CodecError),
    #[error("unknown authentication mechanism '{0}'")]
    UnknownMechanism(String),
}

/// The credentials in `response` for `mechanism`.
pub fn parse(mechanism: &str, response: &Bytes) -> Result<Credentials, SaslError> {
    match mechanism {
        "PLAIN" => {
            let mut parts = response.split(|b| *b == 0);
            let _authzid = parts.next();
            let user = parts.next().unwrap_or_default();
            let pass = parts.next().unwrap_or_default();
            Ok(Credentials {
                user: String::from_utf8_lossy(user).into_owned(),
                password: String::from_utf8_lossy(pass).into_owned(),
            })
        }
        "AMQPLAIN" => {
            // The response is a field table without its length prefix; one longer than a
            // u32 cannot arrive (it came in a long string).
            let len = u32::try_from(response.len()).map_err(|_| SaslError::AmqPlain(CodecError::Truncated))?;
            let mut framed = BytesMut::with_capacity(response.len() + 4);
            framed.put_u32(len);
            framed.put_slice(response);
            let table = Decoder::new(framed.freeze()).table().map_err(SaslError::AmqPlain)?;
            let get = |k: &str| table.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_string();
            Ok(Credentials { user: get("LOGIN"), password: get("PASSWORD") })
        }
        "EXTERNAL" => Ok(Credentials::default()),
        other => Err(SaslError::UnknownMechanism(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::codec::{Encoder, FieldTable, FieldValue};

    fn creds(user: &str, password: &str) -> Credentials {
        Credentials { user: user.into(), password: password.into() }
    }

    #[test]
    fn plain_takes_the_second_and_third_parts() {
        assert_eq!(parse("PLAIN", &Bytes::from_static(b"\0guest\0secret")), Ok(creds("guest", "secret")));
        assert_eq!(parse("PLAIN", &Bytes::from_static(b"admin\0guest\0pw")), Ok(creds("guest", "pw")));
        assert_eq!(parse("PLAIN", &Bytes::from_static(b"")), Ok(creds("", "")));
        assert_eq!(parse("PLAIN", &Bytes::from_static(b"\0only")), Ok(creds("only", "")));
    }

    #[test]
    fn amqplain_reads_login_and_password() {
        let mut t = FieldTable::new();
        t.insert("LOGIN", FieldValue::string("guest"));
        t.insert("PASSWORD", FieldValue::string("pw"));
        let mut buf = BytesMut::new();
        Encoder::new(&mut buf).table(&t);
        let response = buf.freeze().slice(4..);
        assert_eq!(parse("AMQPLAIN", &response), Ok(creds("guest", "pw")));
        assert!(matches!(parse("AMQPLAIN", &Bytes::from_static(b"\x05LOGINS\0\0\0\x09")), Err(SaslError::AmqPlain(_))));
    }

    #[test]
    fn other_mechanisms_are_refused() {
        assert_eq!(parse("CRAM-MD5", &Bytes::new()), Err(SaslError::UnknownMechanism("CRAM-MD5".into())));
        assert_eq!(parse("EXTERNAL", &Bytes::from_static(b"anything")), Ok(Credentials::default()));
    }
}
