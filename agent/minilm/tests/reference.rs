//! The forward pass against reference embeddings of the same model computed by another implementation
//! (candle-transformers' `BertModel` with f32 weights, recorded in `data/reference.json` with the token ids
//! it was given). This crate rounds the weights to bfloat16, which moves an embedding by a cosine of about
//! 1e-5 (0.999994 measured): far below what separates a paraphrase from an unrelated text (~0.5).
//!
//! Needs the model: `scripts/fetch-embedding-model.sh` (or `EMBEDDING_MODEL_DIR`).

use std::path::PathBuf;
use std::sync::OnceLock;

use minilm::{Error, Model};

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = std::env::var_os("EMBEDDING_MODEL_DIR").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../.local/models/all-MiniLM-L6-v2")
            },
            PathBuf::from,
        );
        Model::load(&dir).unwrap_or_else(|e| {
            panic!(
                "these tests need the model in {} (scripts/fetch-embedding-model.sh): {e}",
                dir.display()
            )
        })
    })
}

fn reference() -> Reference {
    serde_json::from_str(include_str!("data/reference.json")).expect("data/reference.json parses")
}

fn assert_close(case: &Case, got: &[f32]) {
    assert_eq!(got.len(), case.embedding.len());
    let cosine: f32 = got.iter().zip(&case.embedding).map(|(a, b)| a * b).sum();
    let worst = got
        .iter()
        .zip(&case.embedding)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(
        cosine > 0.9999 && worst < 2e-3,
        "{:?}: cosine {cosine}, largest difference {worst}",
        case.text
    );
}

#[test]
fn each_text_embeds_as_the_reference_implementation_does() {
    for case in reference().cases {
        let got = model().embed(&[&case.ids]).unwrap().remove(0);
        assert_close(&case, &got);
    }
}

#[test]
fn texts_of_different_lengths_embedded_together_match_each_embedded_alone() {
    let cases = reference().cases;
    let batch: Vec<&[u32]> = cases.iter().map(|c| c.ids.as_slice()).collect();
    let got = model().embed(&batch).unwrap();
    assert_eq!(got.len(), cases.len());
    for (case, got) in cases.iter().zip(&got) {
        assert_close(case, got);
    }
}

#[test]
fn embeddings_are_unit_length() {
    let got = model().embed(&[&[101, 7592, 102]]).unwrap().remove(0);
    let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "{norm}");
}

#[test]
fn invalid_input_is_refused_with_the_reason() {
    let vocab = model().config().vocab_size as u32;
    let cases: [(&[u32], &str); 3] = [
        (&[], "no tokens"),
        (&[101, vocab, 102], "outside the vocabulary"),
        (&[101; 513], "at most 512"),
    ];
    for (ids, reason) in cases {
        match model().embed(&[&[101, 102], ids]) {
            Err(Error::Input(message)) => assert!(message.contains(reason), "{message}"),
            other => panic!("{ids:?}: {other:?}"),
        }
    }
}

#[test]
fn an_empty_batch_is_an_empty_answer() {
    assert!(model().embed(&[]).unwrap().is_empty());
}
