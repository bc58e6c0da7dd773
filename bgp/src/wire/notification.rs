//! NOTIFICATION messages: error codes and subcodes of RFC 4271, RFC 4486 (Cease), RFC 6608
//! (FSM) and RFC 7313 (ROUTE-REFRESH), with the text operators see. Owns naming the codes;
//! deciding *when* to send one belongs to the decoders and the FSM.

use std::fmt;

/// A NOTIFICATION message: error code, subcode and diagnostic data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(error: NotificationError, data: Vec<u8>) -> Self {
        let (code, subcode) = error.code_subcode();
        Self { code, subcode, data }
    }

    /// The known error this code/subcode pair names, if any.
    pub fn error(&self) -> Option<NotificationError> {
        NotificationError::from_code_subcode(self.code, self.subcode)
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error() {
            Some(e) => write!(f, "{e} ({}/{})", self.code, self.subcode)?,
            None => write!(f, "{} / subcode {}", code_name(self.code), self.subcode)?,
        }
        if !self.data.is_empty() {
            write!(f, ", data ")?;
            for b in self.data.iter().take(32) {
                write!(f, "{b:02x}")?;
            }
            if self.data.len() > 32 {
                write!(f, "... ({} bytes)", self.data.len())?;
            }
        }
        Ok(())
    }
}

fn code_name(code: u8) -> &'static str {
    match code {
        1 => "Message Header Error",
        2 => "OPEN Message Error",
        3 => "UPDATE Message Error",
        4 => "Hold Timer Expired",
        5 => "Finite State Machine Error",
        6 => "Cease",
        7 => "ROUTE-REFRESH Message Error",
        _ => "Unknown error code",
    }
}

macro_rules! notification_errors {
    ($( $(#[$doc:meta])* $name:ident = ($code:literal, $sub:literal, $text:literal), )*) => {
        /// Every NOTIFICATION code/subcode this speaker sends or names in logs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum NotificationError {
            $( $(#[$doc])* $name, )*
        }

        impl NotificationError {
            pub fn code_subcode(self) -> (u8, u8) {
                match self { $( NotificationError::$name => ($code, $sub), )* }
            }

            pub fn from_code_subcode(code: u8, subcode: u8) -> Option<Self> {
                match (code, subcode) {
                    $( ($code, $sub) => Some(NotificationError::$name), )*
                    _ => None,
                }
            }

            fn text(self) -> &'static str {
                match self { $( NotificationError::$name => $text, )* }
            }
        }
    };
}

notification_errors! {
    // RFC 4271 section 4.5 / 6.1: Message Header Error.
    /// Data: none.
    ConnectionNotSynchronized = (1, 1, "Message Header Error: Connection Not Synchronized"),
    /// Data: the erroneous 2-octet Length field.
    BadMessageLength = (1, 2, "Message Header Error: Bad Message Length"),
    /// Data: the erroneous Type octet.
    BadMessageType = (1, 3, "Message Header Error: Bad Message Type"),
    // OPEN Message Error (RFC 4271 6.2, RFC 5492).
    OpenUnspecific = (2, 0, "OPEN Message Error"),
    /// Data: 2-octet largest supported version (4).
    UnsupportedVersionNumber = (2, 1, "OPEN Message Error: Unsupported Version Number"),
    BadPeerAs = (2, 2, "OPEN Message Error: Bad Peer AS"),
    BadBgpIdentifier = (2, 3, "OPEN Message Error: Bad BGP Identifier"),
    UnsupportedOptionalParameter = (2, 4, "OPEN Message Error: Unsupported Optional Parameter"),
    UnacceptableHoldTime = (2, 6, "OPEN Message Error: Unacceptable Hold Time"),
    /// Data: the capabilities the speaker requires and the peer lacks (RFC 5492).
    UnsupportedCapability = (2, 7, "OPEN Message Error: Unsupported Capability"),
    // UPDATE Message Error (RFC 4271 6.3; RFC 7606 limits when these reset the session).
    MalformedAttributeList = (3, 1, "UPDATE Message Error: Malformed Attribute List"),
    UnrecognizedWellKnownAttribute = (3, 2, "UPDATE Message Error: Unrecognized Well-known Attribute"),
    MissingWellKnownAttribute = (3, 3, "UPDATE Message Error: Missing Well-known Attribute"),
    AttributeFlagsError = (3, 4, "UPDATE Message Error: Attribute Flags Error"),
    AttributeLengthError = (3, 5, "UPDATE Message Error: Attribute Length Error"),
    InvalidOrigin = (3, 6, "UPDATE Message Error: Invalid ORIGIN Attribute"),
    InvalidNextHop = (3, 8, "UPDATE Message Error: Invalid NEXT_HOP Attribute"),
    OptionalAttributeError = (3, 9, "UPDATE Message Error: Optional Attribute Error"),
    InvalidNetworkField = (3, 10, "UPDATE Message Error: Invalid Network Field"),
    MalformedAsPath = (3, 11, "UPDATE Message Error: Malformed AS_PATH"),
    HoldTimerExpired = (4, 0, "Hold Timer Expired"),
    // RFC 6608.
    FsmUnspecific = (5, 0, "Finite State Machine Error"),
    FsmUnexpectedInOpenSent = (5, 1, "Finite State Machine Error: Receive Unexpected Message in OpenSent State"),
    FsmUnexpectedInOpenConfirm = (5, 2, "Finite State Machine Error: Receive Unexpected Message in OpenConfirm State"),
    FsmUnexpectedInEstablished = (5, 3, "Finite State Machine Error: Receive Unexpected Message in Established State"),
    // Cease (RFC 4486, RFC 8538).
    CeaseUnspecific = (6, 0, "Cease"),
    /// Data: AFI (2), SAFI (1), upper bound (4).
    MaxPrefixesReached = (6, 1, "Cease: Maximum Number of Prefixes Reached"),
    AdministrativeShutdown = (6, 2, "Cease: Administrative Shutdown"),
    PeerDeconfigured = (6, 3, "Cease: Peer De-configured"),
    AdministrativeReset = (6, 4, "Cease: Administrative Reset"),
    ConnectionRejected = (6, 5, "Cease: Connection Rejected"),
    OtherConfigurationChange = (6, 6, "Cease: Other Configuration Change"),
    ConnectionCollisionResolution = (6, 7, "Cease: Connection Collision Resolution"),
    OutOfResources = (6, 8, "Cease: Out of Resources"),
    HardReset = (6, 9, "Cease: Hard Reset"),
    // RFC 7313.
    /// Data: the whole ROUTE-REFRESH message.
    RouteRefreshInvalidLength = (7, 1, "ROUTE-REFRESH Message Error: Invalid Message Length"),
}

impl fmt::Display for NotificationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_subcode_pairs_round_trip_through_the_enum() {
        for e in [
            NotificationError::BadMessageLength,
            NotificationError::UnacceptableHoldTime,
            NotificationError::MalformedAsPath,
            NotificationError::HardReset,
            NotificationError::RouteRefreshInvalidLength,
        ] {
            let (c, s) = e.code_subcode();
            assert_eq!(NotificationError::from_code_subcode(c, s), Some(e));
        }
    }

    #[test]
    fn display_names_the_error_and_shows_data_in_hex() {
        let n = Notification::new(NotificationError::BadMessageLength, vec![0x10, 0x01]);
        assert_eq!(n.to_string(), "Message Header Error: Bad Message Length (1/2), data 1001");
        let unknown = Notification { code: 6, subcode: 99, data: vec![] };
        assert_eq!(unknown.to_string(), "Cease / subcode 99");
    }
}
