//! Every AMQP 0-9-1 method, generated from its field list so that both directions
//! (server and the `hare perf` client) share one definition.

use crate::types::codec::{CodecError, Decoder, Encoder, FieldTable, LongStr, ShortStr};
use bytes::{Bytes, BytesMut};

/// A type that appears as a method field.
pub trait WireField: Sized {
    fn decode(d: &mut Decoder) -> Result<Self, CodecError>;
    fn encode(&self, e: &mut Encoder);
}

macro_rules! wire_field {
    ($ty:ty, $dec:ident, $enc:ident, by_value) => {
        impl WireField for $ty {
            fn decode(d: &mut Decoder) -> Result<Self, CodecError> {
                d.$dec()
            }
            fn encode(&self, e: &mut Encoder) {
                e.$enc(*self)
            }
        }
    };
    ($ty:ty, $dec:ident, $enc:ident, by_ref) => {
        impl WireField for $ty {
            fn decode(d: &mut Decoder) -> Result<Self, CodecError> {
                d.$dec()
            }
            fn encode(&self, e: &mut Encoder) {
                e.$enc(self)
            }
        }
    };
}
wire_field!(u8, octet, octet, by_value);
wire_field!(u16, short, short, by_value);
wire_field!(u32, long, long, by_value);
wire_field!(u64, longlong, longlong, by_value);
wire_field!(bool, bit, bit, by_value);
wire_field!(ShortStr, shortstr, shortstr, by_ref);
wire_field!(LongStr, longstr, longstr, by_ref);
wire_field!(FieldTable, table, table, by_ref);

macro_rules! methods {
    ($( $variant:ident = $name:literal ($class:literal, $method:literal) { $($field:ident : $ty:ty),* $(,)? } )*) => {
        $(
            #[derive(Clone, Debug, Default, PartialEq)]
            pub struct $variant { $(pub $field: $ty),* }
            impl From<$variant> for Method {
                fn from(m: $variant) -> Method { Method::$variant(m) }
            }
        )*

        /// A decoded method frame payload.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Method { $($variant($variant)),* }

        impl Method {
            /// The (class id, method id) pair.
            pub fn ids(&self) -> (u16, u16) {
                match self { $(Method::$variant(_) => ($class, $method)),* }
            }
            /// RabbitMQ's name for the method, e.g. `queue.declare`.
            pub fn name(&self) -> &'static str {
                match self { $(Method::$variant(_) => $name),* }
            }
            /// Decodes a method payload: class id, method id, then the fields.
            #[allow(unused_mut, unused_variables)]
            pub fn decode(payload: Bytes) -> Result<Method, CodecError> {
                let mut d = Decoder::new(payload);
                let class = d.short()?;
                let method = d.short()?;
                match (class, method) {
                    $(($class, $method) => Ok(Method::$variant($variant {
                        $($field: WireField::decode(&mut d)?),*
                    })),)*
                    (c, m) => Err(CodecError::UnknownMethod(c, m)),
                }
            }
            /// Appends the method payload (class id, method id, fields) to `buf`.
            #[allow(unused_variables)]
            pub fn encode(&self, buf: &mut BytesMut) {
                let mut e = Encoder::new(buf);
                match self {
                    $(Method::$variant(m) => {
                        e.short($class);
                        e.short($method);
                        $(m.$field.encode(&mut e);)*
                    })*
                }
                e.finish();
            }
        }
    };
}

/// Name of a method by its ids, for error texts about methods that did not decode.
pub fn method_name(class: u16, method: u16) -> String {
    let class_name = match class {
        10 => "connection",
        20 => "channel",
        40 => "exchange",
        50 => "queue",
        60 => "basic",
        85 => "confirm",
        90 => "tx",
        _ => return format!("unknown class {class}"),
    };
    format!("{class_name} method {method}")
}

methods! {
    ConnectionStart = "connection.start" (10, 10) { version_major: u8, version_minor: u8, server_properties: FieldTable, mechanisms: LongStr, locales: LongStr }
    ConnectionStartOk = "connection.start_ok" (10, 11) { client_properties: FieldTable, mechanism: ShortStr, response: LongStr, locale: ShortStr }
    ConnectionSecure = "connection.secure" (10, 20) { challenge: LongStr }
    ConnectionSecureOk = "connection.secure_ok" (10, 21) { response: LongStr }
    ConnectionTune = "connection.tune" (10, 30) { channel_max: u16, frame_max: u32, heartbeat: u16 }
    ConnectionTuneOk = "connection.tune_ok" (10, 31) { channel_max: u16, frame_max: u32, heartbeat: u16 }
    ConnectionOpen = "connection.open" (10, 40) { virtual_host: ShortStr, capabilities: ShortStr, insist: bool }
    ConnectionOpenOk = "connection.open_ok" (10, 41) { known_hosts: ShortStr }
    ConnectionClose = "connection.close" (10, 50) { reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16 }
    ConnectionCloseOk = "connection.close_ok" (10, 51) {}
    ConnectionBlocked = "connection.blocked" (10, 60) { reason: ShortStr }
    ConnectionUnblocked = "connection.unblocked" (10, 61) {}
    ConnectionUpdateSecret = "connection.update_secret" (10, 70) { new_secret: LongStr, reason: ShortStr }
    ConnectionUpdateSecretOk = "connection.update_secret_ok" (10, 71) {}

    ChannelOpen = "channel.open" (20, 10) { reserved: ShortStr }
    ChannelOpenOk = "channel.open_ok" (20, 11) { reserved: LongStr }
    ChannelFlow = "channel.flow" (20, 20) { active: bool }
    ChannelFlowOk = "channel.flow_ok" (20, 21) { active: bool }
    ChannelClose = "channel.close" (20, 40) { reply_code: u16, reply_text: ShortStr, class_id: u16, method_id: u16 }
    ChannelCloseOk = "channel.close_ok" (20, 41) {}

    ExchangeDeclare = "exchange.declare" (40, 10) { ticket: u16, exchange: ShortStr, kind: ShortStr, passive: bool, durable: bool, auto_delete: bool, internal: bool, nowait: bool, arguments: FieldTable }
    ExchangeDeclareOk = "exchange.declare_ok" (40, 11) {}
    ExchangeDelete = "exchange.delete" (40, 20) { ticket: u16, exchange: ShortStr, if_unused: bool, nowait: bool }
    ExchangeDeleteOk = "exchange.delete_ok" (40, 21) {}
    ExchangeBind = "exchange.bind" (40, 30) { ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr, nowait: bool, arguments: FieldTable }
    ExchangeBindOk = "exchange.bind_ok" (40, 31) {}
    ExchangeUnbind = "exchange.unbind" (40, 40) { ticket: u16, destination: ShortStr, source: ShortStr, routing_key: ShortStr, nowait: bool, arguments: FieldTable }
    ExchangeUnbindOk = "exchange.unbind_ok" (40, 51) {}

    QueueDeclare = "queue.declare" (50, 10) { ticket: u16, queue: ShortStr, passive: bool, durable: bool, exclusive: bool, auto_delete: bool, nowait: bool, arguments: FieldTable }
    QueueDeclareOk = "queue.declare_ok" (50, 11) { queue: ShortStr, message_count: u32, consumer_count: u32 }
    QueueBind = "queue.bind" (50, 20) { ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr, nowait: bool, arguments: FieldTable }
    QueueBindOk = "queue.bind_ok" (50, 21) {}
    QueuePurge = "queue.purge" (50, 30) { ticket: u16, queue: ShortStr, nowait: bool }
    QueuePurgeOk = "queue.purge_ok" (50, 31) { message_count: u32 }
    QueueDelete = "queue.delete" (50, 40) { ticket: u16, queue: ShortStr, if_unused: bool, if_empty: bool, nowait: bool }
    QueueDeleteOk = "queue.delete_ok" (50, 41) { message_count: u32 }
    QueueUnbind = "queue.unbind" (50, 50) { ticket: u16, queue: ShortStr, exchange: ShortStr, routing_key: ShortStr, arguments: FieldTable }
    QueueUnbindOk = "queue.unbind_ok" (50, 51) {}

    BasicQos = "basic.qos" (60, 10) { prefetch_size: u32, prefetch_count: u16, global: bool }
    BasicQosOk = "basic.qos_ok" (60, 11) {}
    BasicConsume = "basic.consume" (60, 20) { ticket: u16, queue: ShortStr, consumer_tag: ShortStr, no_local: bool, no_ack: bool, exclusive: bool, nowait: bool, arguments: FieldTable }
    BasicConsumeOk = "basic.consume_ok" (60, 21) { consumer_tag: ShortStr }
    BasicCancel = "basic.cancel" (60, 30) { consumer_tag: ShortStr, nowait: bool }
    BasicCancelOk = "basic.cancel_ok" (60, 31) { consumer_tag: ShortStr }
    BasicPublish = "basic.publish" (60, 40) { ticket: u16, exchange: ShortStr, routing_key: ShortStr, mandatory: bool, immediate: bool }
    BasicReturn = "basic.return" (60, 50) { reply_code: u16, reply_text: ShortStr, exchange: ShortStr, routing_key: ShortStr }
    BasicDeliver = "basic.deliver" (60, 60) { consumer_tag: ShortStr, delivery_tag: u64, redelivered: bool, exchange: ShortStr, routing_key: ShortStr }
    BasicGet = "basic.get" (60, 70) { ticket: u16, queue: ShortStr, no_ack: bool }
    BasicGetOk = "basic.get_ok" (60, 71) { delivery_tag: u64, redelivered: bool, exchange: ShortStr, routing_key: ShortStr, message_count: u32 }
    BasicGetEmpty = "basic.get_empty" (60, 72) { cluster_id: ShortStr }
    BasicAck = "basic.ack" (60, 80) { delivery_tag: u64, multiple: bool }
    BasicReject = "basic.reject" (60, 90) { delivery_tag: u64, requeue: bool }
    BasicRecoverAsync = "basic.recover_async" (60, 100) { requeue: bool }
    BasicRecover = "basic.recover" (60, 110) { requeue: bool }
    BasicRecoverOk = "basic.recover_ok" (60, 111) {}
    BasicNack = "basic.nack" (60, 120) { delivery_tag: u64, multiple: bool, requeue: bool }

    ConfirmSelect = "confirm.select" (85, 10) { nowait: bool }
    ConfirmSelectOk = "confirm.select_ok" (85, 11) {}

    TxSelect = "tx.select" (90, 10) {}
    TxSelectOk = "tx.select_ok" (90, 11) {}
    TxCommit = "tx.commit" (90, 20) {}
    TxCommitOk = "tx.commit_ok" (90, 21) {}
    TxRollback = "tx.rollback" (90, 30) {}
    TxRollbackOk = "tx.rollback_ok" (90, 31) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_round_trip() {
        let m: Method = QueueDeclare {
            ticket: 0,
            queue: "q".into(),
            passive: false,
            durable: true,
            exclusive: false,
            auto_delete: true,
            nowait: false,
            arguments: FieldTable::new(),
        }
        .into();
        let mut buf = BytesMut::new();
        m.encode(&mut buf);
        assert_eq!(Method::decode(buf.freeze()).unwrap(), m);
        assert_eq!(m.name(), "queue.declare");
    }

    #[test]
    fn unknown_method_is_reported() {
        let payload = Bytes::from_static(&[0, 60, 0, 99]);
        assert_eq!(Method::decode(payload), Err(CodecError::UnknownMethod(60, 99)));
    }
}
