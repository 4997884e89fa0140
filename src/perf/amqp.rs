//! `hare perf` against an AMQP 0-9-1 broker: the queues (and exchange) it declares, its
//! producers (batches of publishes within the confirm window, paced by --rate) and consumers
//! (acking in batches, or auto-ack), and --idle-connections.

use super::*;

/// Runs the AMQP 0-9-1 load `args` describes.
pub(super) async fn run(args: &PerfArgs, target: &Target) -> Result<Summary, String> {
    if args.qos > 0 {
        return Err("--qos is for MQTT brokers (an mqtt:// --uri)".into());
    }
    if args.idle_connections > 0 {
        return idle(args, target).await;
    }
    setup(args, target).await.map_err(|e| format!("setting up queues: {e}"))?;
    let stats = Stats::new(args.expected());
    let mut tasks = Vec::new();
    for c in 0..args.consumers {
        let client = Client::connect(target).await.map_err(|e| format!("consumer {c}: {e}"))?;
        tasks.push(tokio::spawn(consume(args.clone(), c, client, stats.clone())));
    }
    let window = Window::open();
    for p in 0..args.producers {
        let client = Client::connect(target).await.map_err(|e| format!("producer {p}: {e}"))?;
        tasks.push(tokio::spawn(produce(args.clone(), p, client, stats.clone())));
    }
    let samples = report(args, &args.expected(), &stats, window.start).await;
    let measured = stop(&stats, window, tasks).await;
    if !args.keep && args.consumers > 0 {
        let _ = teardown(args, target).await;
    }
    summarize(args, &stats, measured, samples)
}

async fn setup(args: &PerfArgs, target: &Target) -> Result<(), ClientError> {
    let mut c = Client::connect(target).await?;
    let exchange = args.exchange_name();
    if !exchange.is_empty() {
        let kind = if args.exchange == ExchangeType::Fanout { "fanout" } else { "topic" };
        c.call(ExchangeDeclare {
            exchange: exchange.as_str().into(),
            kind: kind.into(),
            durable: args.persistent,
            ..Default::default()
        })
        .await?;
    }
    for i in 0..args.queues {
        let queue = args.queue(i);
        let mut arguments = FieldTable::new();
        if args.quorum || args.stream {
            let kind = if args.stream { "stream" } else { "quorum" };
            arguments.insert("x-queue-type", crate::types::FieldValue::string(kind));
        }
        let durable = args.persistent || args.quorum || args.stream;
        c.call(QueueDeclare { queue: queue.as_str().into(), durable, arguments, ..Default::default() }).await?;
        if !exchange.is_empty() {
            let key = if args.exchange == ExchangeType::Topic { format!("perf.{i}.#") } else { String::new() };
            c.call(QueueBind {
                queue: queue.as_str().into(),
                exchange: exchange.as_str().into(),
                routing_key: key.as_str().into(),
                ..Default::default()
            })
            .await?;
        }
    }
    c.close().await
}

async fn teardown(args: &PerfArgs, target: &Target) -> Result<(), ClientError> {
    let mut c = Client::connect(target).await?;
    for i in 0..args.queues {
        c.call(QueueDelete { queue: args.queue(i).as_str().into(), ..Default::default() }).await?;
    }
    if !args.exchange_name().is_empty() {
        c.call(ExchangeDelete { exchange: args.exchange_name().as_str().into(), ..Default::default() }).await?;
    }
    c.close().await
}

async fn produce(args: PerfArgs, index: usize, mut client: Client, stats: Arc<Stats>) -> Result<(), ClientError> {
    let window = args.confirm as u64;
    if window > 0 {
        client.call(ConfirmSelect { nowait: false }).await?;
    }
    let (mut reader, mut writer) = client.split();
    // Send times by sequence number, for confirm latency; a ring as large as the window.
    let ring: Arc<Vec<AtomicU64>> = Arc::new((0..window.max(1)).map(|_| AtomicU64::new(0)).collect());
    let acked = Arc::new(AtomicU64::new(0));
    // The last sequence number published (set before each batch goes out).
    let sent = Arc::new(AtomicU64::new(0));
    let freed = Arc::new(Notify::new());
    // Tells the confirm task the producer is done: it merges what it recorded and ends.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let confirm_task = {
        let (ring, acked, sent, freed, stats) =
            (ring.clone(), acked.clone(), sent.clone(), freed.clone(), stats.clone());
        tokio::spawn(async move {
            let mut local = new_histogram();
            let mut last_merge = Instant::now();
            loop {
                let frame = tokio::select! {
                    r = reader.method() => r?,
                    _ = &mut done_rx => {
                        Stats::record(&stats.confirm, &mut local);
                        return Ok(());
                    }
                };
                let (tag, multiple, ok) = match frame {
                    (_, Method::BasicAck(a)) => (a.delivery_tag, a.multiple, true),
                    (_, Method::BasicNack(n)) => (n.delivery_tag, n.multiple, false),
                    _ => continue,
                };
                let prev = acked.load(Ordering::Acquire);
                let from = if multiple { prev + 1 } else { tag };
                let now = clock();
                for seq in from..=tag {
                    let sent = ring[(seq % ring.len() as u64) as usize].load(Ordering::Acquire);
                    let _ = local.record(now.saturating_sub(sent).max(1_000));
                }
                let n = tag + 1 - from;
                if ok {
                    stats.confirmed.fetch_add(n, Ordering::AcqRel);
                } else {
                    stats.nacked.fetch_add(n, Ordering::AcqRel);
                }
                // Merged every 50 ms, and whenever everything sent is confirmed, before the
                // producer can see it: the producer ends this task once its last confirm is
                // in, and no latency recorded may be lost with it.
                if tag >= sent.load(Ordering::Acquire) || last_merge.elapsed() > Duration::from_millis(50) {
                    Stats::record(&stats.confirm, &mut local);
                    last_merge = Instant::now();
                }
                acked.store(prev.max(tag), Ordering::Release);
                freed.notify_one();
            }
            #[allow(unreachable_code)]
            Ok::<(), ClientError>(())
        })
    };
    let exchange = ShortStr::from(args.exchange_name());
    let routing_key = ShortStr::from(args.routing_key(index));
    let props =
        BasicProperties { delivery_mode: Some(if args.persistent { 2 } else { 1 }), ..Default::default() }.to_bytes();
    let mut body = vec![0u8; args.size];
    let started = Instant::now();
    let mut seq = 0u64;
    let result: Result<(), ClientError> = async {
        while !stats.stopping() && (args.count == 0 || seq < args.count) {
            let confirms = Confirms { window, acked: &acked, freed: &freed, min_free: 1 };
            let Some(room) = next_batch(&args, &stats, (window > 0).then_some(confirms), started, seq).await else {
                return Ok(());
            };
            for _ in 0..room {
                seq += 1;
                let now = clock();
                body[..8].copy_from_slice(&now.to_be_bytes());
                if window > 0 {
                    ring[(seq % ring.len() as u64) as usize].store(now, Ordering::Release);
                }
                writer.publish(1, &exchange, &routing_key, &props, &body);
            }
            sent.store(seq, Ordering::Release);
            writer.flush().await?;
            stats.published.fetch_add(room, Ordering::AcqRel);
        }
        // With confirms, wait (bounded by the run) for the last ones.
        while window > 0 && acked.load(Ordering::Acquire) < seq && !stats.stopping() {
            tokio::select! {
                _ = freed.notified() => {}
                _ = stats.stopped.notified() => break,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        Ok(())
    }
    .await;
    stats.producers_done.fetch_add(1, Ordering::AcqRel);
    let _ = done_tx.send(());
    let abort = confirm_task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(1), confirm_task).await.is_err() {
        abort.abort();
    }
    result
}

async fn consume(args: PerfArgs, index: usize, mut client: Client, stats: Arc<Stats>) -> Result<(), ClientError> {
    let manual = args.ack == AckMode::Manual;
    if manual && args.prefetch > 0 {
        client.call(BasicQos { prefetch_size: 0, prefetch_count: args.prefetch, global: false }).await?;
    }
    let mut arguments = FieldTable::new();
    if args.stream {
        let offset = match args.offset.parse::<i64>() {
            Ok(n) => crate::types::FieldValue::I64(n),
            Err(_) => crate::types::FieldValue::string(&args.offset),
        };
        arguments.insert("x-stream-offset", offset);
    }
    client
        .call(BasicConsume {
            queue: args.queue(index).as_str().into(),
            consumer_tag: format!("perf-{index}").as_str().into(),
            no_ack: !manual,
            arguments,
            ..Default::default()
        })
        .await?;
    let (mut reader, mut writer) = client.split();
    let ack_every = (args.prefetch as u64 / 2).max(1);
    let mut local = new_histogram();
    let mut last_merge = Instant::now();
    let mut tag = 0u64;
    let mut unacked = 0u64;
    let mut expect_body = false;
    loop {
        let frame = tokio::select! {
            f = reader.frame() => f?,
            _ = stats.stopped.notified() => break,
        };
        match frame {
            Frame::Method(_, p) => match Method::decode(p) {
                Ok(Method::BasicDeliver(d)) => tag = d.delivery_tag,
                Ok(Method::ConnectionClose(c)) => {
                    return Err(ClientError::Closed(c.reply_code, c.reply_text.to_string()))
                }
                Ok(Method::ChannelClose(c)) => return Err(ClientError::Closed(c.reply_code, c.reply_text.to_string())),
                _ => {}
            },
            Frame::Header(_, h) => expect_body = h.body_size > 0,
            Frame::Body(_, b) if expect_body => {
                expect_body = false;
                if b.len() >= 8 {
                    let sent = u64::from_be_bytes(b[..8].try_into().unwrap_or_default());
                    let _ = local.record(clock().saturating_sub(sent).max(1_000));
                }
                stats.count_consumed(1);
                unacked += 1;
                if manual && unacked >= ack_every {
                    writer.method(1, BasicAck { delivery_tag: tag, multiple: true });
                    writer.flush().await?;
                    unacked = 0;
                }
            }
            _ => {}
        }
        if last_merge.elapsed() > Duration::from_millis(50) {
            Stats::record(&stats.e2e, &mut local);
            last_merge = Instant::now();
            if manual && unacked > 0 {
                writer.method(1, BasicAck { delivery_tag: tag, multiple: true });
                writer.flush().await?;
                unacked = 0;
            }
        }
    }
    Stats::record(&stats.e2e, &mut local);
    Ok(())
}

/// Opens idle connections with one channel each and holds them.
async fn idle(args: &PerfArgs, target: &Target) -> Result<Summary, String> {
    let start = Instant::now();
    let mut held = Vec::with_capacity(args.idle_connections);
    for chunk in (0..args.idle_connections).collect::<Vec<_>>().chunks(64) {
        let consumers = args.idle_consumers;
        let opened = futures_join(chunk.iter().map(|_| {
            let t = target.clone();
            async move {
                let mut c = Client::connect(&t).await?;
                if consumers {
                    let declared =
                        c.call(QueueDeclare { exclusive: true, auto_delete: true, ..Default::default() }).await?;
                    let Method::QueueDeclareOk(ok) = declared else {
                        return Err(ClientError::Protocol(format!("expected queue.declare-ok, got {declared:?}")));
                    };
                    c.call(BasicConsume { queue: ok.queue, no_ack: true, ..Default::default() }).await?;
                }
                Ok(c)
            }
        }))
        .await;
        for c in opened {
            held.push(c.map_err(|e| format!("after {} connections: {e}", held.len()))?);
        }
    }
    if !args.json {
        println!("opened {} connections in {:.1}s; holding them", held.len(), start.elapsed().as_secs_f64());
    }
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    Ok(Summary { idle_connections: held.len(), ..Summary::empty(args, start.elapsed().as_secs_f64()) })
}
