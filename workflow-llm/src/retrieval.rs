//! Retrieval for RAG without a service: load and chunk text, embed it (an [`Embedder`]; the
//! built-in [`HashEmbedder`] works offline), search an in-memory [`VectorIndex`], and rerank
//! the candidates with BM25 ([`rerank`]).
//!
//! ```
//! use tidewater_llm::retrieval::{Document, HashEmbedder, VectorIndex, rerank};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut index = VectorIndex::new(HashEmbedder::default());
//! index.add(vec![
//!     Document::new("tea.txt", "Green tea is steeped at 80 degrees for two minutes."),
//!     Document::new("bread.txt", "Sourdough bread needs a starter and a long, slow rise."),
//! ]).await.unwrap();
//! let hits = index.search("how hot should the water be for green tea?", 2).await.unwrap();
//! assert_eq!(hits[0].chunk.source, "tea.txt");
//! let best = rerank("green tea water temperature", hits, 1);
//! assert_eq!(best[0].chunk.source, "tea.txt");
//! # }
//! ```

use std::collections::HashMap;
use std::path::Path;

use futures_util::future::BoxFuture;

use crate::error::Result;

/// Turns texts into vectors whose cosine similarity says how related they are.
pub trait Embedder: Send + Sync {
    /// Embeds each text.
    ///
    /// # Errors
    /// When an embedding service fails.
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>>;
}

/// An offline embedding: a hashed bag of words and word pairs (lower-cased, stop words out,
/// a light plural stemmer), signed and L2-normalised. It knows no synonyms, but ranks text
/// that shares the question's words well, in microseconds, with no model.
#[derive(Debug, Clone)]
pub struct HashEmbedder {
    dimensions: usize,
}

impl Default for HashEmbedder {
    fn default() -> Self {
        HashEmbedder { dimensions: 1024 }
    }
}

impl HashEmbedder {
    /// An embedder with this many dimensions (more: fewer collisions).
    pub fn new(dimensions: usize) -> HashEmbedder {
        HashEmbedder {
            dimensions: dimensions.max(8),
        }
    }

    /// Embeds one text.
    pub fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimensions];
        let words = terms(text);
        let mut add = |feature: &str, weight: f32| {
            let h = fnv(feature);
            let sign = if h >> 63 == 0 { 1.0 } else { -1.0 };
            v[(h % self.dimensions as u64) as usize] += sign * weight;
        };
        for w in &words {
            add(w, 1.0);
        }
        for pair in words.windows(2) {
            add(&format!("{} {}", pair[0], pair[1]), 0.5);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

impl Embedder for HashEmbedder {
    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>>> {
        Box::pin(async move { Ok(texts.iter().map(|t| self.embed_one(t)).collect()) })
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

const STOP_WORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "has",
    "have", "how", "i", "in", "is", "it", "its", "of", "on", "or", "should", "that", "the", "this",
    "to", "was", "what", "when", "where", "which", "who", "why", "will", "with", "you", "your",
];

/// The words of a text that carry meaning: lower-cased, stop words out, plurals folded.
///
/// ```
/// use tidewater_llm::retrieval::terms;
/// assert_eq!(terms("The Cats are sleeping, aren't they?"), ["cat", "sleeping", "aren't", "they"]);
/// ```
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| !w.is_empty() && !STOP_WORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

fn stem(word: &str) -> String {
    if word.len() > 4 && word.ends_with("ies") {
        format!("{}y", &word[..word.len() - 3])
    } else if word.len() > 3
        && word.ends_with('s')
        && !word.ends_with("ss")
        && !word.ends_with("us")
    {
        word[..word.len() - 1].to_string()
    } else {
        word.to_string()
    }
}

/// A text to index: where it came from, and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it came from (a file name, a URL).
    pub source: String,
    /// The text.
    pub text: String,
}

impl Document {
    /// A document.
    pub fn new(source: impl Into<String>, text: impl Into<String>) -> Document {
        Document {
            source: source.into(),
            text: text.into(),
        }
    }
}

/// Reads every `.txt` and `.md` file of a folder (not its subfolders), sorted by name.
///
/// # Errors
/// When the folder or a file cannot be read.
pub fn load_dir(dir: impl AsRef<Path>) -> std::io::Result<Vec<Document>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "txt" || x == "md"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)?;
            let name = p
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            Ok(Document::new(name, text))
        })
        .collect()
}

/// Splits text into chunks of at most about `max_chars`: whole paragraphs where they fit,
/// sentences where a paragraph is too long.
///
/// ```
/// use tidewater_llm::retrieval::chunk_text;
/// let text = "One. Two.\n\nThree is a longer sentence. Four.";
/// assert_eq!(chunk_text(text, 12), ["One. Two.", "Three is a longer sentence.", "Four."]);
/// assert_eq!(chunk_text(text, 1000), ["One. Two.\n\nThree is a longer sentence. Four."]);
/// ```
pub fn chunk_text(text: &str, max_chars: usize) -> Vec<String> {
    // (piece, paragraph it came from): sentences of one paragraph rejoin with a space,
    // paragraphs with a blank line.
    let mut pieces = Vec::new();
    for (p, paragraph) in text
        .split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        if paragraph.chars().count() <= max_chars {
            pieces.push((paragraph.to_string(), p));
        } else {
            pieces.extend(sentences(paragraph).into_iter().map(|s| (s, p)));
        }
    }
    let mut chunks: Vec<(String, usize)> = Vec::new();
    for (piece, p) in pieces {
        match chunks.last_mut() {
            Some((last, last_p))
                if last.chars().count() + piece.chars().count() + 2 <= max_chars =>
            {
                last.push_str(if *last_p == p { " " } else { "\n\n" });
                last.push_str(&piece);
                *last_p = p;
            }
            _ => chunks.push((piece, p)),
        }
    }
    chunks.into_iter().map(|(c, _)| c).collect()
}

/// Splits a paragraph after `.`, `!` or `?` followed by a space.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?') && bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace())
        {
            let s = text[start..=i].trim();
            if !s.is_empty() {
                out.push(s.to_string());
            }
            start = i + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// One indexed chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The document it came from.
    pub source: String,
    /// Its position in that document.
    pub position: usize,
    /// The text.
    pub text: String,
}

/// A chunk found by a search, with its score (higher is better).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The chunk.
    pub chunk: Chunk,
    /// Cosine similarity after a search; the fused score after [`rerank`].
    pub score: f32,
}

/// An in-memory vector index: chunks and their embeddings, searched exhaustively (fine up to
/// tens of thousands of chunks).
pub struct VectorIndex<E> {
    embedder: E,
    chunks: Vec<Chunk>,
    vectors: Vec<Vec<f32>>,
    chunk_chars: usize,
}

impl<E: Embedder> VectorIndex<E> {
    /// An empty index that chunks documents to about 600 characters.
    pub fn new(embedder: E) -> VectorIndex<E> {
        VectorIndex {
            embedder,
            chunks: Vec::new(),
            vectors: Vec::new(),
            chunk_chars: 600,
        }
    }

    /// Sets the chunk size for documents added later.
    pub fn chunk_chars(mut self, max_chars: usize) -> VectorIndex<E> {
        self.chunk_chars = max_chars.max(1);
        self
    }

    /// How many chunks are indexed.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Is the index empty?
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Chunks, embeds and indexes documents; returns how many chunks were added.
    ///
    /// # Errors
    /// When the embedder fails.
    pub async fn add(&mut self, documents: Vec<Document>) -> Result<usize> {
        let new: Vec<Chunk> = documents
            .iter()
            .flat_map(|d| {
                chunk_text(&d.text, self.chunk_chars)
                    .into_iter()
                    .enumerate()
                    .map(|(position, text)| Chunk {
                        source: d.source.clone(),
                        position,
                        text,
                    })
            })
            .collect();
        let texts: Vec<String> = new.iter().map(|c| c.text.clone()).collect();
        let vectors = self.embedder.embed(&texts).await?;
        let added = new.len();
        self.chunks.extend(new);
        self.vectors.extend(vectors);
        Ok(added)
    }

    /// The `k` chunks most similar to the query, best first.
    ///
    /// # Errors
    /// When the embedder fails.
    pub async fn search(&self, query: &str, k: usize) -> Result<Vec<Hit>> {
        let q = self
            .embedder
            .embed(&[query.to_string()])
            .await?
            .pop()
            .unwrap_or_default();
        let mut hits: Vec<Hit> = self
            .chunks
            .iter()
            .zip(&self.vectors)
            .map(|(chunk, v)| Hit {
                chunk: chunk.clone(),
                score: cosine(&q, v),
            })
            .collect();
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(k);
        Ok(hits)
    }
}

/// Cosine similarity (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// BM25 scores of `query` against each of `texts` (k1 = 1.2, b = 0.75), with the
/// document frequencies of `texts` itself.
pub fn bm25(query: &str, texts: &[&str]) -> Vec<f32> {
    let docs: Vec<Vec<String>> = texts.iter().map(|t| terms(t)).collect();
    let n = docs.len() as f32;
    let avg_len = (docs.iter().map(Vec::len).sum::<usize>() as f32 / n.max(1.0)).max(1.0);
    let mut df: HashMap<&str, f32> = HashMap::new();
    for doc in &docs {
        let mut seen: Vec<&str> = doc.iter().map(String::as_str).collect();
        seen.sort_unstable();
        seen.dedup();
        for t in seen {
            *df.entry(t).or_default() += 1.0;
        }
    }
    let mut query_terms = terms(query);
    query_terms.sort();
    query_terms.dedup();
    docs.iter()
        .map(|doc| {
            let len = doc.len() as f32;
            query_terms
                .iter()
                .map(|q| {
                    let tf = doc.iter().filter(|t| *t == q).count() as f32;
                    if tf == 0.0 {
                        return 0.0;
                    }
                    let d = df.get(q.as_str()).copied().unwrap_or(0.0);
                    let idf = ((n - d + 0.5) / (d + 0.5) + 1.0).ln();
                    idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / avg_len))
                })
                .sum()
        })
        .collect()
}

/// Reranks search hits by fusing their vector score with BM25 over the candidates (each
/// normalised to 0..1, weighted equally), and keeps the best `top_n`.
pub fn rerank(query: &str, hits: Vec<Hit>, top_n: usize) -> Vec<Hit> {
    let texts: Vec<&str> = hits.iter().map(|h| h.chunk.text.as_str()).collect();
    let lexical = bm25(query, &texts);
    let max_lex = lexical.iter().copied().fold(0.0f32, f32::max);
    let max_vec = hits.iter().map(|h| h.score).fold(0.0f32, f32::max);
    let norm = |x: f32, max: f32| if max > 0.0 { x / max } else { 0.0 };
    let mut fused: Vec<Hit> = hits
        .into_iter()
        .zip(lexical)
        .map(|(hit, lex)| Hit {
            score: 0.5 * norm(hit.score, max_vec) + 0.5 * norm(lex, max_lex),
            chunk: hit.chunk,
        })
        .collect();
    fused.sort_by(|a, b| b.score.total_cmp(&a.score));
    fused.truncate(top_n);
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_texts_score_higher() {
        let e = HashEmbedder::default();
        let q = e.embed_one("rust borrow checker");
        let near = e.embed_one("The borrow checker of Rust rejects dangling references.");
        let far = e.embed_one("Bake the bread for forty minutes.");
        assert!(cosine(&q, &near) > 0.3, "{}", cosine(&q, &near));
        assert!(cosine(&q, &far).abs() < 0.15, "{}", cosine(&q, &far));
        assert!((cosine(&near, &near) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn bm25_prefers_rare_matching_terms() {
        let texts = ["the cat sat", "the dog sat", "a cat and a cat"];
        let s = bm25("cat", &texts);
        assert_eq!(s[1], 0.0);
        assert!(s[2] > s[0] && s[0] > 0.0, "{s:?}");
    }

    #[test]
    fn rerank_promotes_lexical_matches() {
        let chunk = |text: &str| Chunk {
            source: text.into(),
            position: 0,
            text: text.into(),
        };
        let hits = vec![
            Hit {
                chunk: chunk("general notes about tea"),
                score: 0.9,
            },
            Hit {
                chunk: chunk("oolong brewing temperature is 90 degrees"),
                score: 0.8,
            },
        ];
        let out = rerank("oolong temperature", hits, 1);
        assert_eq!(
            out[0].chunk.text,
            "oolong brewing temperature is 90 degrees"
        );
    }

    #[test]
    fn chunks_respect_the_size() {
        let text = "Alpha beta. Gamma delta epsilon. Zeta.\n\nEta theta.";
        for chunk in chunk_text(text, 20) {
            assert!(
                chunk.chars().count() <= 20 || !chunk.contains(' '),
                "{chunk:?}"
            );
        }
        assert_eq!(chunk_text("", 10), Vec::<String>::new());
    }
}
