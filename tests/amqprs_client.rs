//! The broker driven by the amqprs client crate: declare, publish with confirms, consume, ack.

mod common;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, ConfirmSelectArguments,
    ExchangeDeclareArguments, QueueBindArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::BasicProperties;
use common::TestServer;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_confirm_consume_ack() {
    let server = TestServer::start();
    let conn = Connection::open(&OpenConnectionArguments::new("127.0.0.1", server.port, "guest", "guest"))
        .await
        .expect("connect");
    let ch = conn.open_channel(None).await.expect("channel");
    ch.exchange_declare(ExchangeDeclareArguments::new("rs_topic", "topic")).await.expect("exchange");
    let (queue, _, _) =
        ch.queue_declare(QueueDeclareArguments::new("rs_q")).await.expect("declare").expect("declare-ok");
    ch.queue_bind(QueueBindArguments::new(&queue, "rs_topic", "orders.*")).await.expect("bind");
    ch.confirm_select(ConfirmSelectArguments::default()).await.expect("confirm");
    for i in 0..100u32 {
        let props = BasicProperties::default().with_message_id(&i.to_string()).with_delivery_mode(2).finish();
        ch.basic_publish(props, i.to_be_bytes().to_vec(), BasicPublishArguments::new("rs_topic", "orders.new"))
            .await
            .expect("publish");
    }
    ch.basic_qos(BasicQosArguments::new(0, 10, false)).await.expect("qos");
    let (_tag, mut rx) = ch.basic_consume_rx(BasicConsumeArguments::new(&queue, "")).await.expect("consume");
    for i in 0..100u32 {
        let msg = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("in time").expect("message");
        let deliver = msg.deliver.expect("deliver");
        assert_eq!(msg.content.expect("body"), i.to_be_bytes().to_vec());
        assert_eq!(msg.basic_properties.expect("props").message_id().map(String::as_str), Some(i.to_string().as_str()));
        assert_eq!(deliver.routing_key(), "orders.new");
        ch.basic_ack(BasicAckArguments::new(deliver.delivery_tag(), false)).await.expect("ack");
    }
    let (_, count, _) = ch
        .queue_declare(QueueDeclareArguments::new("rs_q").passive(true).finish())
        .await
        .expect("passive")
        .expect("declare-ok");
    assert_eq!(count, 0);
    ch.close().await.expect("close channel");
    conn.close().await.expect("close connection");
}
