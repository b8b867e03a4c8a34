//! Tokenizers: ponder's character-level vocabulary (saved and loaded as a Hugging Face
//! `tokenizer.json`), and any other `tokenizer.json` through the `tokenizers` crate.

use std::path::Path;

use serde_json::json;

use crate::error::PolicyError;

pub const PAD: &str = "<pad>";
pub const BOS: &str = "<bos>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";

/// The characters of ponder's vocabulary after the four special tokens: newline, space and
/// printable ASCII. Every task format is written in these.
fn char_alphabet() -> Vec<char> {
    let mut chars = vec!['\n', ' '];
    chars.extend((33u8..=126).map(char::from));
    chars
}

#[derive(Clone, Debug)]
enum Backend {
    /// One token per character; a lookup table for ASCII.
    Chars {
        to_id: Box<[u32; 128]>,
        alphabet: Vec<char>,
    },
    /// Any Hugging Face tokenizer.
    HuggingFace(Box<tokenizers::Tokenizer>),
}

/// A tokenizer with the facts generation needs: which tokens end a line (a step), and the
/// ids of the special tokens.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    backend: Backend,
    /// The text of every token id (for incremental decoding).
    pieces: Vec<String>,
    /// Whether each token's text contains a newline: generating one ends a step.
    ends_line: Vec<bool>,
    pub pad_id: u32,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
}

impl Tokenizer {
    /// ponder's character-level tokenizer: `<pad> <bos> <eos> <unk>`, newline, space and
    /// printable ASCII (100 tokens).
    pub fn chars() -> Tokenizer {
        let alphabet = char_alphabet();
        let mut to_id = [3u32; 128];
        for (i, c) in alphabet.iter().enumerate() {
            to_id[*c as usize] = (i + 4) as u32;
        }
        let mut pieces: Vec<String> = [PAD, BOS, EOS, UNK].iter().map(|s| s.to_string()).collect();
        pieces.extend(alphabet.iter().map(|c| c.to_string()));
        let ends_line = pieces.iter().map(|p| p == "\n").collect();
        Tokenizer {
            backend: Backend::Chars {
                to_id: Box::new(to_id),
                alphabet,
            },
            pieces,
            ends_line,
            pad_id: 0,
            bos_id: Some(1),
            eos_id: Some(2),
        }
    }

    /// Loads any Hugging Face `tokenizer.json`. A file written by [`Tokenizer::save`] loads
    /// back as the fast character tokenizer.
    pub fn load(path: &Path) -> Result<Tokenizer, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::io(path, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| PolicyError::Format(format!("{}: not JSON: {e}", path.display())))?;
        let chars = Tokenizer::chars();
        let expected = chars.hf_json();
        if value.pointer("/model") == expected.pointer("/model")
            && value.pointer("/pre_tokenizer") == expected.pointer("/pre_tokenizer")
        {
            return Ok(chars);
        }
        let hf = tokenizers::Tokenizer::from_bytes(text.as_bytes())
            .map_err(|e| PolicyError::Format(format!("{}: not a tokenizer.json: {e}", path.display())))?;
        Ok(Self::from_hf(hf))
    }

    fn from_hf(hf: tokenizers::Tokenizer) -> Tokenizer {
        let n = hf.get_vocab_size(true);
        let pieces: Vec<String> = (0..n as u32)
            .map(|id| hf.decode(&[id], false).unwrap_or_default())
            .collect();
        let ends_line = pieces.iter().map(|p| p.contains('\n')).collect();
        let find = |names: &[&str]| names.iter().find_map(|t| hf.token_to_id(t));
        let pad_id = find(&[PAD, "<|endoftext|>", "</s>", "<unk>"]).unwrap_or(0);
        let bos_id = find(&[BOS, "<s>", "<|begin_of_text|>"]);
        let eos_id = find(&[EOS, "</s>", "<|endoftext|>", "<|end_of_text|>"]);
        Tokenizer {
            backend: Backend::HuggingFace(Box::new(hf)),
            pieces,
            ends_line,
            pad_id,
            bos_id,
            eos_id,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_char_level(&self) -> bool {
        matches!(self.backend, Backend::Chars { .. })
    }

    /// Token ids of a text, without special tokens.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match &self.backend {
            Backend::Chars { to_id, .. } => text
                .chars()
                .map(|c| if (c as u32) < 128 { to_id[c as usize] } else { 3 })
                .collect(),
            Backend::HuggingFace(hf) => hf.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default(),
        }
    }

    /// The text of token ids; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.backend {
            Backend::Chars { alphabet, .. } => ids
                .iter()
                .filter_map(|&id| alphabet.get((id as usize).checked_sub(4)?))
                .collect(),
            Backend::HuggingFace(hf) => hf.decode(ids, true).unwrap_or_default(),
        }
    }

    /// The text of `ids` as [`Tokenizer::decode`] gives it, and where each token's text starts
    /// in it. A Hugging Face tokenizer's token text depends on its neighbours (a SentencePiece
    /// word's leading space, a character split over byte tokens, special tokens left out), so
    /// each offset is the length of the decoded prefix before the token, as far as that prefix
    /// agrees with the whole text.
    pub fn decode_with_offsets(&self, ids: &[u32]) -> (String, Vec<usize>) {
        let mut offsets = Vec::with_capacity(ids.len());
        match &self.backend {
            Backend::Chars { .. } => {
                let mut text = String::new();
                for &id in ids {
                    offsets.push(text.len());
                    text.push_str(self.piece(id));
                }
                (text, offsets)
            }
            Backend::HuggingFace(_) => {
                let text = self.decode(ids);
                let mut last = 0;
                for k in 0..ids.len() {
                    let prefix = self.decode(&ids[..k]);
                    let mut at = text.bytes().zip(prefix.bytes()).take_while(|(a, b)| a == b).count();
                    while !text.is_char_boundary(at) {
                        at -= 1;
                    }
                    last = last.max(at);
                    offsets.push(last);
                }
                (text, offsets)
            }
        }
    }

    /// The text one token contributes (empty for special tokens of the char tokenizer).
    pub fn piece(&self, id: u32) -> &str {
        match &self.backend {
            Backend::Chars { .. } if id < 4 => "",
            _ => self.pieces.get(id as usize).map_or("", String::as_str),
        }
    }

    /// Whether generating this token ends a line (a step).
    pub fn ends_line(&self, id: u32) -> bool {
        self.ends_line.get(id as usize).copied().unwrap_or(false)
    }

    /// The Hugging Face `tokenizer.json` of the character tokenizer.
    fn hf_json(&self) -> serde_json::Value {
        let special = |id: usize, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        };
        // Byte-level BPE without merges: one token per character, and the form every
        // `transformers` tokenizer class (Llama's, Qwen2's, the generic one) reads alike.
        let byte_level = |p: &str| match p {
            " " => "\u{0120}".to_string(),
            "\n" => "\u{010a}".to_string(),
            other => other.to_string(),
        };
        let vocab: serde_json::Map<String, serde_json::Value> = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (byte_level(p), json!(i)))
            .collect();
        let byte_level_step = json!({"type": "ByteLevel", "add_prefix_space": false,
                                     "trim_offsets": false, "use_regex": false});
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(0, PAD), special(1, BOS), special(2, EOS), special(3, UNK)],
            "normalizer": null,
            "pre_tokenizer": byte_level_step,
            "post_processor": null,
            "decoder": byte_level_step,
            "model": {"type": "BPE", "dropout": null, "unk_token": UNK,
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                      "vocab": vocab, "merges": []},
        })
    }

    /// Writes `tokenizer.json` (and, for the char tokenizer, the Hugging Face
    /// `tokenizer_config.json` that names its special tokens).
    pub fn save(&self, dir: &Path) -> Result<(), PolicyError> {
        let write = |name: &str, value: &serde_json::Value| {
            let path = dir.join(name);
            let text = serde_json::to_string_pretty(value).unwrap_or_default();
            ponder_datagen::io::write_atomic(&path, text.as_bytes()).map_err(|e| PolicyError::io(&path, e))
        };
        match &self.backend {
            Backend::Chars { .. } => {
                write("tokenizer.json", &self.hf_json())?;
                write(
                    "tokenizer_config.json",
                    &json!({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": PAD,
                            "bos_token": BOS, "eos_token": EOS, "unk_token": UNK,
                            "model_max_length": 1_000_000, "clean_up_tokenization_spaces": false}),
                )
            }
            Backend::HuggingFace(hf) => {
                let path = dir.join("tokenizer.json");
                let text = hf
                    .to_string(true)
                    .map_err(|e| PolicyError::Format(format!("serializing tokenizer: {e}")))?;
                ponder_datagen::io::write_atomic(&path, text.as_bytes()).map_err(|e| PolicyError::io(&path, e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_round_trip_every_task_format() {
        let t = Tokenizer::chars();
        assert_eq!(t.vocab_size(), 100);
        let text = "countdown 3 7 9 target 30\n7*3=21 left 9 21\nAnswer: (7*3)+9\n";
        let ids = t.encode(text);
        assert_eq!(ids.len(), text.len());
        assert_eq!(t.decode(&ids), text);
        assert!(t.ends_line(t.encode("\n")[0]));
        assert!(!t.ends_line(t.encode("a")[0]));
        assert_eq!(t.encode("é"), vec![3], "unknown characters map to <unk>");
    }

    #[test]
    fn saved_char_tokenizer_loads_in_the_tokenizers_crate_identically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = Tokenizer::chars();
        t.save(dir.path()).expect("saves");
        let path = dir.path().join("tokenizer.json");
        let hf = tokenizers::Tokenizer::from_file(&path).expect("the tokenizers crate reads it");
        let text = "chains mod 23: a=5, b=a+a; find b\nb=a+a=5+5=10\nAnswer: 10\n";
        let ids = hf.encode(text, false).expect("encodes").get_ids().to_vec();
        assert_eq!(ids, t.encode(text));
        assert_eq!(hf.decode(&ids, true).expect("decodes"), text);
        // Loading goes through the general path when the vocabulary differs, and through the
        // fast path for our own file.
        let back = Tokenizer::load(&path).expect("loads");
        assert!(back.is_char_level());
        let general = Tokenizer::from_hf(hf);
        assert_eq!(general.encode(text), t.encode(text));
        assert!(general.ends_line(t.encode("\n")[0]));
        let (decoded, offsets) = general.decode_with_offsets(&ids);
        assert_eq!((decoded.as_str(), offsets.len()), (text, ids.len()));
        assert!(
            offsets.iter().enumerate().all(|(k, &o)| o == k),
            "one byte per character"
        );
    }

    /// A SentencePiece-style tokenizer: a token's text depends on where it stands (a word's
    /// leading space goes at the start of the text) and the end-of-sequence token has none.
    #[test]
    fn a_word_tokenizers_text_and_offsets_come_from_decoding_not_from_its_pieces() {
        let json = r#"{"version": "1.0", "truncation": null, "padding": null,
            "added_tokens": [{"id": 0, "content": "</s>", "single_word": false, "lstrip": false,
                              "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
            "post_processor": null,
            "decoder": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
            "model": {"type": "WordLevel", "vocab": {"</s>": 0, "▁hello": 1, "▁world": 2, "<unk>": 3},
                      "unk_token": "<unk>"}}"#;
        let t = Tokenizer::from_hf(tokenizers::Tokenizer::from_bytes(json.as_bytes()).expect("a tokenizer"));
        assert_eq!(t.eos_id, Some(0));
        let ids = [1, 2, 0];
        let pieces: String = ids.iter().map(|&id| t.piece(id)).collect();
        assert_ne!(pieces, "hello world", "pieces alone lose the space and keep </s>");
        let (text, offsets) = t.decode_with_offsets(&ids);
        assert_eq!(text, "hello world");
        assert_eq!(offsets, vec![0, 5, 11]);
    }
}
