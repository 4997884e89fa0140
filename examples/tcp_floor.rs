//! The kernel's floor under a broker's cost per large message: what a process that does
//! nothing but pass bytes from one loopback TCP socket to another spends per message.
//!
//! A broker that relays a message from a publisher to a consumer must at least receive its
//! bytes from one socket and send them on another: two copies through the kernel, plus the
//! TCP work on loopback, where the sender's system call also runs the receiver's side of
//! the stack and wakes it. This program measures exactly that and nothing more: a producer
//! thread writes as fast as it can in 16-message writes, one relay thread reads up to 1 MiB
//! at a time and writes what it read on (blocking sockets, no framing, no parsing, no
//! queue), and a consumer thread reads and drops. The relay thread's CPU time (user +
//! system, as `/proc` counts it, softirq work included) divided by the messages it moved is
//! the floor that `bench/scale.py` prints beside Hare's and RabbitMQ's CPU per message.
//!
//! ```sh
//! cargo run --release --example tcp_floor -- 65536 10      # message size in bytes, seconds
//! cargo run --release --example tcp_floor -- 65536 10 64   # reading into 64 buffers in turn
//! cargo run --release --example tcp_floor -- 65536 10 1 524288   # Hare's send buffer
//! ```
//! The third argument makes the relay read into that many 1 MiB buffers in turn instead of
//! one, so that the bytes it copies out are no longer in the CPU's cache, as a broker's are
//! when messages wait in a queue between their two copies. The fourth asks for that send
//! buffer (SO_SNDBUF) on the relay's output socket, as Hare's `tcp_sndbuf` does on its
//! sockets; 0 (the default) leaves it to the kernel's autotuning.
//! It prints one JSON object: `{"size":…,"per_sec":…,"cpu_us_per_message":…}`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// The calling thread's user + system CPU time in seconds.
fn thread_cpu_seconds() -> std::io::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // Fields after the command name (which may hold spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11) + ticks(12)) as f64 / hz)
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64 * 1024).max(1);
    let seconds: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let buffers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1).max(1);
    let sndbuf: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(0);

    let from_producer = TcpListener::bind("127.0.0.1:0")?;
    let to_consumer = TcpListener::bind("127.0.0.1:0")?;
    let (producer_addr, consumer_addr) = (from_producer.local_addr()?, to_consumer.local_addr()?);

    let producer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut socket = TcpStream::connect(producer_addr)?;
        let batch = vec![0x5au8; size * 16];
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            socket.write_all(&batch)?;
        }
        Ok(())
    });
    let consumer = std::thread::spawn(move || -> std::io::Result<u64> {
        let mut socket = TcpStream::connect(consumer_addr)?;
        let mut buf = vec![0u8; 1024 * 1024];
        let mut received = 0u64;
        loop {
            match socket.read(&mut buf)? {
                0 => return Ok(received),
                n => received += n as u64,
            }
        }
    });

    let (mut input, _) = from_producer.accept()?;
    let (mut output, _) = to_consumer.accept()?;
    if sndbuf > 0 {
        socket2::SockRef::from(&output).set_send_buffer_size(sndbuf)?;
    }
    // Touched before the clock starts, so that page faults are not counted.
    let mut bufs: Vec<Vec<u8>> = (0..buffers).map(|_| vec![1u8; 1024 * 1024]).collect();
    let (cpu_before, started) = (thread_cpu_seconds()?, Instant::now());
    let mut moved = 0u64;
    for turn in 0.. {
        let buf = &mut bufs[turn % buffers];
        let n = input.read(buf)?;
        if n == 0 {
            break;
        }
        output.write_all(&buf[..n])?;
        moved += n as u64;
    }
    let cpu = thread_cpu_seconds()? - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    drop(output);
    producer.join().expect("the producer thread panicked")?;
    let received = consumer.join().expect("the consumer thread panicked")?;
    assert_eq!(received, moved, "the consumer got every byte the relay sent");
    let messages = moved as f64 / size as f64;
    println!(
        "{{\"size\":{size},\"per_sec\":{:.0},\"cpu_us_per_message\":{:.2}}}",
        messages / elapsed,
        cpu * 1e6 / messages.max(1.0)
    );
    Ok(())
}
