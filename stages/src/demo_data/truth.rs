//! Whether a caption of a demo picture is true: the truth-based metric of the demo. A BLEU or
//! CIDEr-D score rewards words shared with the references, so "a large triangle that is yellow"
//! scores well against "a large blue triangle"; here the caption is checked against what the
//! picture holds (the scenes table `demo_data` writes).
//!
//! A caption is right when it mentions at least one object, and every object it mentions has a
//! shape the picture holds, in the colour the caption gives it (if any), in the number the
//! caption states (if it states one with a count word: "one", "two", "three"). A colour is read
//! from the word before the shape ("a red circle") or after it ("the circle is red", "circles
//! that are red"), as the demo's grammar writes them.

use std::collections::HashMap;
use std::path::Path;

use crate::table::{read_parquet, strings, u32s};
use crate::StageError;

use super::scene::{COLOURS, SHAPES};
use super::SCENES_TABLE;

/// The objects one picture holds: (shape, colour) for each, as the scenes table names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneTruth {
    pub objects: Vec<(String, String)>,
}

/// One object a caption mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mention<'a> {
    shape: &'a str,
    colour: Option<&'a str>,
    count: Option<usize>,
}

/// The shape a word names (singular or plural), by its singular name.
fn shape_of(word: &str) -> Option<&'static str> {
    SHAPES
        .iter()
        .find(|shape| shape.name() == word || shape.plural() == word)
        .map(|shape| shape.name())
}

fn is_colour(word: &str) -> bool {
    COLOURS.iter().any(|colour| colour.name() == word)
}

fn count_of(word: &str) -> Option<usize> {
    match word {
        "one" => Some(1),
        "two" => Some(2),
        "three" => Some(3),
        _ => None,
    }
}

/// The objects `words` mention, in order.
fn mentions<'a>(words: &[&'a str]) -> Vec<Mention<'a>> {
    let mut found = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let Some(shape) = shape_of(word) else {
            continue;
        };
        let before = i.checked_sub(1).map(|j| words[j]);
        let (colour, count_at) = match before {
            Some(colour) if is_colour(colour) => (Some(colour), i.checked_sub(2)),
            _ => {
                // "the circle is red", "two circles that are red".
                let after: Vec<&str> = words[i + 1..].iter().take(3).copied().collect();
                let colour = match after.as_slice() {
                    ["that", "is" | "are", colour, ..] | ["is" | "are", colour, ..]
                        if is_colour(colour) =>
                    {
                        Some(*colour)
                    }
                    _ => None,
                };
                (colour, i.checked_sub(1))
            }
        };
        let count = count_at.and_then(|j| count_of(words[j]));
        found.push(Mention {
            shape,
            colour,
            count,
        });
    }
    found
}

/// Whether `words` (a caption, lower-case tokens) is true of `scene`; see the module's doc.
pub fn caption_is_true(scene: &SceneTruth, words: &[&str]) -> bool {
    let mentioned = mentions(words);
    !mentioned.is_empty()
        && mentioned.iter().all(|mention| {
            let matching = scene
                .objects
                .iter()
                .filter(|(shape, colour)| {
                    shape == mention.shape && mention.colour.is_none_or(|c| c == colour)
                })
                .count();
            matching > 0 && mention.count.is_none_or(|count| count == matching)
        })
}

/// Every picture's objects by image id, from the scenes table in a `demo_data` output folder.
///
/// # Errors
/// If the table cannot be read or lacks a column (an output of an older `demo_data`).
pub fn read_truth(demo_dir: &Path) -> Result<HashMap<String, SceneTruth>, StageError> {
    let path = demo_dir.join(SCENES_TABLE);
    let table = read_parquet(&path)?;
    let ids = strings(&path, &table, "image_id")?;
    let counts = u32s(&path, &table, "n_objects")?;
    let (shapes, colours) = (
        strings(&path, &table, "shape")?,
        strings(&path, &table, "colour")?,
    );
    let (shapes2, colours2) = (
        strings(&path, &table, "shape2")?,
        strings(&path, &table, "colour2")?,
    );
    Ok(ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            // A pair holds two different objects; otherwise every object is the main one.
            let objects = if shapes2[i].is_empty() {
                vec![(shapes[i].clone(), colours[i].clone()); counts[i] as usize]
            } else {
                vec![
                    (shapes[i].clone(), colours[i].clone()),
                    (shapes2[i].clone(), colours2[i].clone()),
                ]
            };
            (id, SceneTruth { objects })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::super::scene;
    use super::*;

    fn truth(objects: &[(&str, &str)]) -> SceneTruth {
        SceneTruth {
            objects: objects
                .iter()
                .map(|(s, c)| (s.to_string(), c.to_string()))
                .collect(),
        }
    }

    fn check(scene: &SceneTruth, caption: &str) -> bool {
        caption_is_true(scene, &caption.split(' ').collect::<Vec<_>>())
    }

    #[test]
    fn wrong_colours_shapes_and_counts_are_caught() {
        let blue_triangle = truth(&[("triangle", "blue")]);
        assert!(check(&blue_triangle, "a large blue triangle"));
        assert!(check(&blue_triangle, "the triangle is blue"));
        assert!(!check(&blue_triangle, "a large triangle that is yellow"));
        assert!(!check(
            &blue_triangle,
            "a blue circle on a white background"
        ));
        assert!(!check(&blue_triangle, "a picture of something"));

        let crosses = truth(&[("cross", "blue"); 3]);
        assert!(check(&crosses, "three crosses that are blue"));
        assert!(check(&crosses, "a group of three blue crosses"));
        assert!(!check(&crosses, "two crosses that are blue"));
        assert!(!check(&crosses, "there are two blue crosses"));

        let pair = truth(&[("star", "red"), ("square", "green")]);
        assert!(check(&pair, "a red star above a green square"));
        assert!(!check(&pair, "a red star above a green circle"));
        assert!(!check(&pair, "a green star above a red square"));
    }

    #[test]
    fn every_caption_the_demo_writes_is_true_of_its_scene() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..500 {
            let picture = scene::sample_scene(&mut rng);
            let captions = scene::captions(&picture, &mut rng);
            let objects = picture
                .objects
                .iter()
                .map(|o| (o.shape.name().to_string(), o.colour.name().to_string()))
                .collect();
            let truth = SceneTruth { objects };
            for caption in &captions {
                assert!(check(&truth, caption), "{caption:?} of {picture:?}");
            }
        }
    }
}
