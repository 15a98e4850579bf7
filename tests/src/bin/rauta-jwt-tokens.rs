//! `rauta-jwt-tokens`: signing keys and tokens for the JWT rows of `benches/proxy.sh`. Writes,
//! into `--dir`: `jwks-rs256.json` and `token-rs256` (one RS256 token, the steady case: a
//! client reusing its token, verified once and then remembered), `jwks-es256.json` and
//! `tokens-es256.lua` (a wrk script that sends `--count` distinct ES256 tokens in turn: more
//! than the proxy remembers, so that every request has its signature checked).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rauta_tests::jwt::{SigningKey, jwks, unix_time};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "rauta-jwt-tokens", version)]
struct Args {
    /// Where the files go.
    #[arg(long)]
    dir: PathBuf,
    /// Distinct ES256 tokens in the wrk script.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Request path the wrk script asks for.
    #[arg(long, default_value = "/jwt-cold")]
    path: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let claims = |sub: &str| json!({"iss": "https://bench", "aud": "bench", "sub": sub, "exp": unix_time(24 * 3600)});
    let rsa = SigningKey::rsa("rs");
    let write = |name: &str, text: &str| {
        std::fs::write(args.dir.join(name), text).with_context(|| format!("writing {name}"))
    };
    write("jwks-rs256.json", &jwks(&[&rsa]))?;
    write("token-rs256", &rsa.sign(&claims("client")))?;
    let es = SigningKey::es256("es");
    write("jwks-es256.json", &jwks(&[&es]))?;
    let mut lua = String::from("local tokens = {\n");
    for i in 0..args.count {
        lua.push_str(&format!(
            "\"{}\",\n",
            es.sign(&claims(&format!("client-{i}")))
        ));
    }
    lua.push_str(&format!(
        "}}\nlocal i = 0\nrequest = function()\n  i = i % #tokens + 1\n  return wrk.format(nil, \"{}\", {{[\"Authorization\"] = \"Bearer \" .. tokens[i]}})\nend\n",
        args.path
    ));
    write("tokens-es256.lua", &lua)?;
    Ok(())
}
