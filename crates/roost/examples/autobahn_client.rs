//! Drives an Autobahn fuzzing server (kosoku -m fuzzingserver) with roost's client: asks for
//! the case count, runs every case echoing as the suite expects (permessage-deflate offered),
//! then asks the server to write its reports.
//!
//! ```text
//! cargo run --release -p roost --example autobahn_client -- ws://127.0.0.1:9001
//! ```

use roost::{ClientBuilder, Config, Message};

const AGENT: &str = "roost";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:9001".to_owned());
    let base = base.trim_end_matches('/');
    let count: u32 = {
        let (mut ws, _) = roost::connect(&format!("{base}/getCaseCount")).await?;
        let Some(Ok(Message::Text(text))) = ws.recv().await else {
            return Err("the fuzzing server did not send the case count".into());
        };
        while ws.recv().await.is_some() {}
        text.trim().parse()?
    };
    eprintln!("running {count} cases");
    let config = Config::builder()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20)
        .build()?;
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={AGENT}");
        match ClientBuilder::new(&url)?
            .config(config.clone())
            .connect()
            .await
        {
            Ok((mut ws, _)) => {
                while let Some(message) = ws.recv().await {
                    match message {
                        Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                            if ws.send(message).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {}
                    }
                }
            }
            Err(error) => eprintln!("case {case}: {error}"),
        }
    }
    let (mut ws, _) = roost::connect(&format!("{base}/updateReports?agent={AGENT}")).await?;
    ws.close(None).await?;
    while ws.recv().await.is_some() {}
    eprintln!("reports updated");
    Ok(())
}
