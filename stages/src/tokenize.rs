//! The tokenizer: how caption text and query text become words. The `captions` stage splits
//! every caption with it, and the task commands split their queries with it (through
//! `Vocabulary::encode_text`), so that a query word meets the vocabulary in the same form.
//!
//! The rules, in order:
//!
//! 1. NFKC normalisation (Unicode Standard Annex #15): fullwidth `ＡＢＣ` reads as `ABC`,
//!    ligatures such as `ﬁ` as `fi`, a decomposed `é` as the precomposed one. NFKC does not
//!    fold `ß` into `ss`: German words keep their spelling.
//! 2. Typographic apostrophes (`’ ‘ ‛ ʼ ＇ ´` and the backtick) become `'`, and typographic
//!    double quotes (`“ ” „ ‟ « » ＂ 〝 〞`) become `"`, so that `woman’s` and `woman's` are the
//!    same word.
//! 3. Unicode lower-casing (`str::to_lowercase`).
//! 4. Words are the word segments of Unicode Standard Annex #29 (word boundaries) that hold at
//!    least one letter or digit: punctuation, symbols and emoji are not words and are dropped.
//!    The annex keeps `o'clock`, `don't` and `3.5` whole and splits `t-shirt` at the hyphen.
//! 5. Scripts written without spaces between words (Han, Hiragana, Katakana) give one token per
//!    character: finding their words needs a dictionary, and single ideographs are the unit that
//!    caption models for those scripts commonly use. The annex already splits Han and Hiragana
//!    this way; Katakana runs, which it keeps together, are split here. Thai and the other
//!    scripts the annex leaves to dictionaries come out one letter (with its marks) at a time.
//! 6. An apostrophe that opens a word is part of it unless an apostrophe also closes the word:
//!    Flickr8k writes possessives as a token of their own (`a woman 's hat`), and `'s` stays
//!    that token, while `'quoted'` is the word `quoted` in quotes.
//!
//! Changing any rule changes the words of existing captions, so it must bump `VERSION`, which
//! enters the `captions` stage's cache key.

use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// The version of these rules. Bump it whenever a rule changes the words any text splits into.
pub const VERSION: u32 = 1;

/// The words of `text`, by the rules of this module: lower-case, NFKC-normalised strings, each
/// with at least one letter or digit, in text order. Text without a letter or digit (only
/// punctuation, emoji, whitespace) has no words.
pub fn words(text: &str) -> Vec<String> {
    let text = normalise(text);
    let segments: Vec<&str> = text.split_word_bounds().collect();
    let mut words = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        if !is_word(segment) {
            continue;
        }
        let opened = i > 0
            && segments[i - 1] == "'"
            && (i < 2 || !is_word(segments[i - 2]))
            && segments.get(i + 1) != Some(&"'");
        let first = words.len();
        split_spaceless(segment, &mut words);
        if opened {
            if let Some(word) = words.get_mut(first) {
                word.insert(0, '\'');
            }
        }
    }
    words
}

/// NFKC, typographic apostrophes and quotes folded to ASCII, lower case.
fn normalise(text: &str) -> String {
    text.nfkc()
        .map(|c| match c {
            '\u{2018}' | '\u{2019}' | '\u{201B}' | '\u{02BC}' | '\u{FF07}' | '\u{00B4}' | '`' => {
                '\''
            }
            '\u{201C}' | '\u{201D}' | '\u{201E}' | '\u{201F}' | '\u{00AB}' | '\u{00BB}'
            | '\u{FF02}' | '\u{301D}' | '\u{301E}' => '"',
            c => c,
        })
        .collect::<String>()
        .to_lowercase()
}

/// Whether a word segment is a word: it holds a letter or a digit.
fn is_word(segment: &str) -> bool {
    segment.chars().any(char::is_alphanumeric)
}

/// Pushes the words of one segment: each character of a script written without spaces on its
/// own, the runs of other characters whole.
fn split_spaceless(segment: &str, words: &mut Vec<String>) {
    let mut run = String::new();
    for c in segment.chars() {
        if is_spaceless(c) {
            if !run.is_empty() {
                words.push(std::mem::take(&mut run));
            }
            words.push(c.to_string());
        } else {
            run.push(c);
        }
    }
    if is_word(&run) {
        words.push(run);
    }
}

/// Han ideographs (with the iteration mark 々 and the ideographic zero 〇), Hiragana and
/// Katakana (with the prolonged sound mark ー): the scripts written without spaces whose
/// characters are each a token. After NFKC, halfwidth Katakana and the compatibility
/// ideographs are already mapped into these blocks.
fn is_spaceless(c: char) -> bool {
    matches!(c,
        '\u{3005}' | '\u{3007}'
        | '\u{3040}'..='\u{309F}' // Hiragana
        | '\u{30A0}'..='\u{30FF}' // Katakana
        | '\u{31F0}'..='\u{31FF}' // Katakana phonetic extensions
        | '\u{3400}'..='\u{4DBF}' // CJK extension A
        | '\u{4E00}'..='\u{9FFF}' // CJK unified ideographs
        | '\u{F900}'..='\u{FAFF}' // CJK compatibility ideographs
        | '\u{20000}'..='\u{323AF}' // CJK extensions B to H
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_keeps_accented_letters() {
        assert_eq!(
            words("Un café près de la fenêtre."),
            ["un", "café", "près", "de", "la", "fenêtre"]
        );
        // A decomposed é (e + combining acute) is the same word after NFKC.
        assert_eq!(words("cafe\u{301}"), ["café"]);
    }

    #[test]
    fn german_keeps_umlauts_and_eszett() {
        assert_eq!(
            words("Zwei Männer gehen über die Straße, GRÜSSE!"),
            ["zwei", "männer", "gehen", "über", "die", "straße", "grüsse"]
        );
    }

    #[test]
    fn chinese_gives_one_token_per_ideograph() {
        assert_eq!(
            words("一只狗在草地上奔跑。"),
            ["一", "只", "狗", "在", "草", "地", "上", "奔", "跑"]
        );
        // Katakana runs, which word boundaries keep whole, are split too; Latin stays whole.
        assert_eq!(
            words("犬がボールを追うdog"),
            ["犬", "が", "ボ", "ー", "ル", "を", "追", "う", "dog"]
        );
        // Halfwidth Katakana is fullwidth after NFKC.
        assert_eq!(words("ﾎﾞｰﾙ"), ["ボ", "ー", "ル"]);
    }

    #[test]
    fn emoji_and_punctuation_are_not_words() {
        assert_eq!(words("A dog 🐶 runs!!! 🎉🎉"), ["a", "dog", "runs"]);
        assert!(words("🐶🎉 ... !? — “ ”").is_empty());
        assert!(words(" . , ").is_empty());
    }

    #[test]
    fn typographic_apostrophes_read_as_ascii() {
        assert_eq!(words("a woman’s hat"), words("a woman's hat"));
        assert_eq!(words("a woman's hat"), ["a", "woman's", "hat"]);
        assert_eq!(words("the dogʼs ball"), ["the", "dog's", "ball"]);
        assert_eq!(words("don‘t"), ["don't"]);
        assert_eq!(words("“quoted” ‘words’"), ["quoted", "words"]);
    }

    #[test]
    fn flickr_possessives_stay_tokens_of_their_own() {
        assert_eq!(
            words("a woman 's hat and a man ’s dog"),
            ["a", "woman", "'s", "hat", "and", "a", "man", "'s", "dog"]
        );
        assert_eq!(words("do n't stop"), ["do", "n't", "stop"]);
        assert_eq!(words("five o'clock"), ["five", "o'clock"]);
        // Quoted words lose their quotes; a trailing possessive apostrophe is dropped.
        assert_eq!(
            words("a slip 'n' slide in the tikes' yard"),
            ["a", "slip", "n", "slide", "in", "the", "tikes", "yard"]
        );
        assert_eq!(words("'s"), ["'s"]);
    }

    #[test]
    fn fullwidth_letters_and_ligatures_are_normalised() {
        assert_eq!(words("ＡＢＣ　ｄｏｇ ２ ﬁsh"), ["abc", "dog", "2", "fish"]);
    }

    #[test]
    fn numbers_and_hyphens_follow_word_boundaries() {
        assert_eq!(
            words("A T-shirt, 3.5 dogs and 1,000 cats"),
            ["a", "t", "shirt", "3.5", "dogs", "and", "1,000", "cats"]
        );
    }

    #[test]
    fn thai_comes_out_one_letter_at_a_time() {
        // สุนัข (dog): the vowel mark ุ stays with its consonant.
        assert_eq!(words("สุนัข"), ["สุ", "นั", "ข"]);
    }
}
