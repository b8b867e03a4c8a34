//! The remote policy against a real HTTP server speaking the OpenAI completions API (a small
//! one written here, backed by a local transformer), with a dead endpoint in its pool.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ponder_policy_init::remote::{RemoteConfig, RemotePolicy};
use ponder_policy_init::{GenRequest, HostWeights, ModelConfig, Policy, Sampling, Stop, Tokenizer, TransformerPolicy};
use serde_json::{Value, json};

fn micro_policy() -> TransformerPolicy {
    let config = ModelConfig {
        d_model: 32,
        n_layers: 2,
        n_heads: 2,
        n_kv_heads: 2,
        ffn_hidden: 64,
        max_seq_len: 128,
        ..ModelConfig::preset("tiny", 100).expect("preset")
    };
    let mut weights = HostWeights::init(&config, 9).expect("init");
    for t in &mut weights.tensors {
        if t.shape.len() == 2 {
            t.data.iter_mut().for_each(|x| *x *= 20.0);
        }
    }
    TransformerPolicy::new(&weights, Tokenizer::chars())
}

/// `/v1/completions` with `stop` (one string), `n`, `seed`, `logprobs`, `echo`.
async fn completions(State(policy): State<Arc<TransformerPolicy>>, Json(body): Json<Value>) -> Json<Value> {
    let prompt = body["prompt"].as_str().unwrap_or("").to_string();
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(16) as usize;
    if body["echo"].as_bool() == Some(true) {
        let tokens = policy.tokenizer().encode(&prompt);
        let lps = policy.score(&[("", &prompt)]).pop().unwrap_or_default();
        let offsets: Vec<usize> = (0..tokens.len()).collect();
        return Json(
            json!({"choices": [{"index": 0, "text": prompt, "finish_reason": "length",
            "logprobs": {"token_logprobs": lps, "text_offset": offsets}}]}),
        );
    }
    let stop = body["stop"][0].as_str().map(str::to_string);
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let sampling = Sampling {
        temperature: body["temperature"].as_f64().unwrap_or(1.0) as f32,
        ..Sampling::default()
    };
    let seed = body["seed"].as_u64().unwrap_or(0);
    let requests: Vec<GenRequest> = (0..n)
        .map(|i| GenRequest::new(prompt.clone(), Stop::Never, max_tokens, sampling, seed + i as u64))
        .collect();
    let generations = policy.generate(&requests).await.expect("generates");
    let choices: Vec<Value> = generations
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let (text, reason) = match stop.as_deref().and_then(|s| g.text.find(s).map(|p| (p, s))) {
                Some((p, _)) => (g.text[..p].to_string(), "stop"),
                None => (g.text.clone(), "length"),
            };
            let count = policy.tokenizer().encode(&text).len();
            json!({"index": i, "text": text, "finish_reason": reason,
                   "logprobs": {"token_logprobs": g.logprobs[..count.min(g.logprobs.len())]}})
        })
        .collect();
    Json(json!({"choices": choices}))
}

#[tokio::test]
async fn remote_generations_match_the_served_model() {
    let policy = Arc::new(micro_policy());
    let app = Router::new()
        .route("/v1/completions", post(completions))
        .with_state(policy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serves") });

    let remote = RemotePolicy::new(RemoteConfig {
        // The first endpoint refuses connections: requests fail over to the live one.
        endpoints: vec!["http://127.0.0.1:9/v1".into(), format!("http://{addr}/v1")],
        attempts: 4,
        ..RemoteConfig::default()
    })
    .expect("config");
    let prompt = "countdown 1 2 3 target 6\n";
    for stop in [Stop::StepEnd, Stop::TraceEnd] {
        let request = GenRequest::new(prompt, stop, 40, Sampling::greedy(), 1);
        let local = policy.generate(std::slice::from_ref(&request)).await.expect("local");
        let far = remote.generate(&[request.clone(), request]).await.expect("remote");
        assert_eq!(far.len(), 2);
        // Where the local model stopped on its own, the remote one stops at the same text.
        if local[0].finish != ponder_policy_init::Finish::Length {
            assert_eq!(far[0].text, local[0].text, "{stop:?}");
        }
        assert_eq!(far[0].text, far[1].text, "greedy is deterministic");
    }
    let lp = remote.logprobs("countdown ", "1 2").await.expect("echo");
    let local = policy.logprobs("countdown ", "1 2").await.expect("local");
    assert_eq!(lp.len(), 3);
    // The echo server scores without a BOS token; the shapes agree, the values are finite.
    assert!(lp.iter().all(|l| l.is_finite() && *l <= 0.0));
    assert_eq!(local.len(), 3);

    // A server that does not give the sampled token ids cannot serve RL's rollouts.
    let without_ids = RemotePolicy::new(RemoteConfig {
        endpoints: vec![format!("http://{addr}/v1")],
        token_ids: true,
        ..RemoteConfig::default()
    })
    .expect("config")
    .with_tokenizer(Tokenizer::chars());
    let err = without_ids
        .generate(&[GenRequest::new(prompt, Stop::TraceEnd, 20, Sampling::greedy(), 1)])
        .await
        .expect_err("no token ids in the answer");
    assert!(err.to_string().contains("token_id:N"), "{err}");

    let dead = RemotePolicy::new(RemoteConfig {
        endpoints: vec!["http://127.0.0.1:9/v1".into()],
        attempts: 2,
        ..RemoteConfig::default()
    })
    .expect("config");
    let err = dead
        .generate(&[GenRequest::new(prompt, Stop::StepEnd, 5, Sampling::greedy(), 1)])
        .await
        .expect_err("nothing listens");
    assert!(err.to_string().contains("gave up after 2 attempts"), "{err}");
}

/// A server running another model: the ids it samples lie outside the run's tokenizer.
async fn foreign_ids(Json(_): Json<Value>) -> Json<Value> {
    Json(
        json!({"choices": [{"index": 0, "text": "7*3", "finish_reason": "length",
        "logprobs": {"tokens": ["token_id:30", "token_id:5000", "token_id:31"],
                     "token_logprobs": [-0.1, -0.2, -0.3], "text_offset": [0, 1, 2]}}]}),
    )
}

#[tokio::test]
async fn token_ids_outside_the_tokenizer_are_refused() {
    let app = Router::new().route("/v1/completions", post(foreign_ids));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serves") });
    let remote = RemotePolicy::new(RemoteConfig {
        endpoints: vec![format!("http://{addr}/v1")],
        token_ids: true,
        ..RemoteConfig::default()
    })
    .expect("config")
    .with_tokenizer(Tokenizer::chars());
    let err = remote
        .generate(&[GenRequest::new(
            "countdown 3 7 9 target 30\n",
            Stop::TraceEnd,
            20,
            Sampling::greedy(),
            1,
        )])
        .await
        .expect_err("id 5000 of a 100-token vocabulary");
    assert!(err.to_string().contains("token id 5000 is outside"), "{err}");
}
