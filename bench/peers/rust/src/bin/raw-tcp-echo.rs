//! The ceiling: a TCP server that writes back every byte it reads, with no WebSocket framing,
//! handshake or rooms. It bounds what any WebSocket stack could reach on this machine.

use roost_bench_peers::{Args, accept, listen};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn main() -> std::io::Result<()> {
    let args = Args::parse("raw-tcp-echo");
    args.runtime()?.block_on(serve(args))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = listen(args.listen)?;
    println!("raw-tcp-echo listening on {}", listener.local_addr()?);
    loop {
        let stream = accept(&listener).await;
        tokio::spawn(async move {
            // A reset peer ends its connection; nothing else to do.
            let _ = echo(stream).await;
        });
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}
