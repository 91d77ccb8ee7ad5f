//! What a demo picture shows and how it is described: the scene sampler places coloured shapes
//! so that every caption written about them is literally true, and the caption writer words each
//! scene five ways from a grammar small enough for a tiny captioning network to learn.
//!
//! Positions and radii are fractions of the picture's side (y grows downwards), so a scene does
//! not depend on the pixel size it is later drawn at.

use rand::Rng;

/// Colours a shape can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    White,
    Black,
}

pub const COLOURS: [Colour; 8] = [
    Colour::Red,
    Colour::Green,
    Colour::Blue,
    Colour::Yellow,
    Colour::Purple,
    Colour::Orange,
    Colour::White,
    Colour::Black,
];

impl Colour {
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    /// Saturated values far apart from each other and from every background, so that the name
    /// of a colour is never in doubt even after JPEG compression and noise.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 35],
            Colour::Green => [30, 175, 60],
            Colour::Blue => [35, 80, 235],
            Colour::Yellow => [250, 225, 30],
            Colour::Purple => [150, 50, 195],
            Colour::Orange => [250, 140, 20],
            Colour::White => [245, 245, 245],
            Colour::Black => [15, 15, 15],
        }
    }
}

/// Colours of the picture's background.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Background {
    Gray,
    White,
    Black,
    Brown,
}

pub const BACKGROUNDS: [Background; 4] = [
    Background::Gray,
    Background::White,
    Background::Black,
    Background::Brown,
];

impl Background {
    pub fn name(self) -> &'static str {
        match self {
            Background::Gray => "gray",
            Background::White => "white",
            Background::Black => "black",
            Background::Brown => "brown",
        }
    }

    pub fn rgb(self) -> [u8; 3] {
        match self {
            Background::Gray => [128, 128, 128],
            Background::White => [235, 235, 235],
            Background::Black => [25, 25, 25],
            Background::Brown => [115, 80, 50],
        }
    }

    /// Whether a shape of `colour` would share this background's colour name: such a shape
    /// would be invisible or, at best, described by an ambiguous caption.
    pub fn clashes_with(self, colour: Colour) -> bool {
        self.name() == colour.name()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
}

pub const SHAPES: [Shape; 5] = [
    Shape::Circle,
    Shape::Square,
    Shape::Triangle,
    Shape::Star,
    Shape::Cross,
];

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Cross => "crosses",
        }
    }
}

/// Where the main object is relative to the second one in a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Relation {
    Above,
    Below,
    LeftOf,
    RightOf,
}

pub const RELATIONS: [Relation; 4] = [
    Relation::Above,
    Relation::Below,
    Relation::LeftOf,
    Relation::RightOf,
];

/// How far apart two related objects must be along the relation's axis, in multiples of the sum
/// of their radii: more than 1 keeps them from touching.
const RELATION_GAP: f64 = 1.15;

/// How far apart, in radii, the centres of a group's objects must be along x or y: more than 2
/// keeps their bounding squares, and so the shapes, from touching.
const GROUP_SPACING: f64 = 2.2;

/// Free border around every object, as a fraction of the side.
pub const MARGIN: f64 = 0.03;

/// Attempts at a random placement before falling back to a fixed one.
const PLACEMENT_TRIES: usize = 500;

impl Relation {
    /// The short name in the scenes table.
    pub fn name(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
        }
    }

    /// The phrase in captions: "a red circle {phrase} a blue square".
    fn phrase(self) -> &'static str {
        match self {
            Relation::Above => "above",
            Relation::Below => "below",
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
        }
    }

    /// A second wording of the same relation, so captions do not all share one phrase.
    fn synonym(self) -> &'static str {
        match self {
            Relation::Above => "over",
            Relation::Below => "under",
            Relation::LeftOf => "on the left of",
            Relation::RightOf => "on the right of",
        }
    }

    /// The relation seen from the other object.
    pub fn inverse(self) -> Relation {
        match self {
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
        }
    }

    /// Whether `a` is in this relation to `b` so plainly that no other relation could describe
    /// it: apart along the relation's axis by more than both radii, and offset along the other
    /// axis by at most half as much (which also makes the four relations exclusive).
    pub fn holds(self, a: &Object, b: &Object) -> bool {
        let (along, across) = match self {
            Relation::Above => (b.y - a.y, b.x - a.x),
            Relation::Below => (a.y - b.y, a.x - b.x),
            Relation::LeftOf => (b.x - a.x, b.y - a.y),
            Relation::RightOf => (a.x - b.x, a.y - b.y),
        };
        along >= RELATION_GAP * (a.radius + b.radius) && across.abs() <= 0.5 * along
    }
}

/// The size word of a single object; the two radius ranges leave a gap so the word is never a
/// close call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Small,
    Large,
}

impl Size {
    fn word(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    fn radius_range(self) -> (f64, f64) {
        match self {
            Size::Small => (0.10, 0.15),
            Size::Large => (0.22, 0.30),
        }
    }
}

/// One shape in a picture. Every shape fits in the square of half-side `radius` around its
/// centre.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub x: f64,
    pub y: f64,
    pub radius: f64,
}

/// The kinds of scene, each with its own caption templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One object.
    Single { size: Size },
    /// Two or three objects of the same shape and colour.
    Group,
    /// Two objects differing in shape or colour; the first is `relation` of the second.
    Pair { relation: Relation },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub background: Background,
    pub layout: Layout,
    /// The main object first.
    pub objects: Vec<Object>,
}

impl Scene {
    /// The object every caption names first (in a pair, the one the relation is about).
    pub fn main(&self) -> &Object {
        &self.objects[0]
    }

    pub fn relation(&self) -> Option<Relation> {
        match self.layout {
            Layout::Pair { relation } => Some(relation),
            _ => None,
        }
    }
}

/// A uniformly chosen element of a non-empty slice.
fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

fn pick_colour(rng: &mut impl Rng, background: Background) -> Colour {
    let allowed: Vec<Colour> = COLOURS
        .into_iter()
        .filter(|&colour| !background.clashes_with(colour))
        .collect();
    pick(rng, &allowed)
}

/// A centre that keeps an object of `radius` inside the picture with the margin to spare.
fn random_centre(rng: &mut impl Rng, radius: f64) -> (f64, f64) {
    let low = MARGIN + radius;
    let high = 1.0 - MARGIN - radius;
    (rng.gen_range(low..=high), rng.gen_range(low..=high))
}

/// Samples a scene: the background, the layout and its objects.
pub fn sample_scene(rng: &mut impl Rng) -> Scene {
    let background = pick(rng, &BACKGROUNDS);
    let roll: f64 = rng.gen();
    if roll < 0.3 {
        single(rng, background)
    } else if roll < 0.6 {
        group(rng, background)
    } else {
        pair(rng, background)
    }
}

fn single(rng: &mut impl Rng, background: Background) -> Scene {
    let shape = pick(rng, &SHAPES);
    let colour = pick_colour(rng, background);
    let size = if rng.gen() { Size::Small } else { Size::Large };
    let (low, high) = size.radius_range();
    let radius = rng.gen_range(low..=high);
    let (x, y) = random_centre(rng, radius);
    Scene {
        background,
        layout: Layout::Single { size },
        objects: vec![Object {
            shape,
            colour,
            x,
            y,
            radius,
        }],
    }
}

fn group(rng: &mut impl Rng, background: Background) -> Scene {
    let shape = pick(rng, &SHAPES);
    let colour = pick_colour(rng, background);
    let count = if rng.gen() { 2 } else { 3 };
    let radius = rng.gen_range(0.08..=0.13);
    let apart = |centres: &[(f64, f64)]| {
        centres.iter().enumerate().all(|(i, a)| {
            centres[i + 1..]
                .iter()
                .all(|b| (a.0 - b.0).abs().max((a.1 - b.1).abs()) >= GROUP_SPACING * radius)
        })
    };
    let mut centres = Vec::new();
    for _ in 0..PLACEMENT_TRIES {
        centres = (0..count).map(|_| random_centre(rng, radius)).collect();
        if apart(&centres) {
            break;
        }
    }
    if !apart(&centres) {
        // Along the diagonal there is room for three objects of the largest radius.
        centres = [(0.2, 0.2), (0.8, 0.8), (0.5, 0.5)][..count].to_vec();
    }
    let objects = centres
        .into_iter()
        .map(|(x, y)| Object {
            shape,
            colour,
            x,
            y,
            radius,
        })
        .collect();
    Scene {
        background,
        layout: Layout::Group,
        objects,
    }
}

fn pair(rng: &mut impl Rng, background: Background) -> Scene {
    let first = (pick(rng, &SHAPES), pick_colour(rng, background));
    let mut second = first;
    while second == first {
        second = (pick(rng, &SHAPES), pick_colour(rng, background));
    }
    let relation = pick(rng, &RELATIONS);
    let object = |(shape, colour): (Shape, Colour), radius: f64, (x, y): (f64, f64)| Object {
        shape,
        colour,
        x,
        y,
        radius,
    };
    let radius_a = rng.gen_range(0.09..=0.16);
    let radius_b = rng.gen_range(0.09..=0.16);
    let mut placed = None;
    for _ in 0..PLACEMENT_TRIES {
        let a = object(first, radius_a, random_centre(rng, radius_a));
        let b = object(second, radius_b, random_centre(rng, radius_b));
        if relation.holds(&a, &b) {
            placed = Some((a, b));
            break;
        }
    }
    let (a, b) = placed.unwrap_or_else(|| {
        // Opposite sides of the picture satisfy any relation for radii up to 0.16.
        let (near, far) = match relation {
            Relation::Above => ((0.5, 0.25), (0.5, 0.75)),
            Relation::Below => ((0.5, 0.75), (0.5, 0.25)),
            Relation::LeftOf => ((0.25, 0.5), (0.75, 0.5)),
            Relation::RightOf => ((0.75, 0.5), (0.25, 0.5)),
        };
        (object(first, radius_a, near), object(second, radius_b, far))
    });
    Scene {
        background,
        layout: Layout::Pair { relation },
        objects: vec![a, b],
    }
}

/// `words` with the indefinite article it takes.
fn a(words: &str) -> String {
    let vowel = words.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {words}", if vowel { "an" } else { "a" })
}

/// "red circle"
fn thing(object: &Object) -> String {
    format!("{} {}", object.colour.name(), object.shape.name())
}

fn count_word(count: usize) -> &'static str {
    match count {
        1 => "one",
        2 => "two",
        _ => "three",
    }
}

/// Five differently worded captions of `scene`, lower case, without final punctuation. Each
/// names the main object's colour and shape; the random choices only pick between synonymous
/// wordings, never between facts.
pub fn captions(scene: &Scene, rng: &mut impl Rng) -> [String; 5] {
    let background = format!("on {} background", a(scene.background.name()));
    let picture = a(if rng.gen() { "picture" } else { "image" });
    let main = scene.main();
    let (colour, shape) = (main.colour.name(), main.shape.name());
    match scene.layout {
        Layout::Single { size } => {
            let size = size.word();
            [
                a(&format!("{size} {}", thing(main))),
                format!("{} {background}", a(&thing(main))),
                if rng.gen() {
                    format!("there is {}", a(&thing(main)))
                } else {
                    format!("there is one {}", thing(main))
                },
                format!("{picture} of {}", a(&thing(main))),
                if rng.gen() {
                    format!("the {shape} is {colour}")
                } else {
                    format!("{} that is {colour}", a(&format!("{size} {shape}")))
                },
            ]
        }
        Layout::Group => {
            let count = count_word(scene.objects.len());
            let shapes = main.shape.plural();
            [
                format!("there are {count} {colour} {shapes}"),
                format!("{count} {colour} {shapes} {background}"),
                format!("{count} {shapes} that are {colour}"),
                format!("{picture} of {count} {colour} {shapes}"),
                if rng.gen() {
                    format!("the {count} {shapes} are {colour}")
                } else {
                    format!("a group of {count} {colour} {shapes}")
                },
            ]
        }
        Layout::Pair { relation } => {
            let first = a(&thing(main));
            let second = a(&thing(&scene.objects[1]));
            [
                format!("{first} {} {second}", relation.phrase()),
                format!("{second} {} {first}", relation.inverse().phrase()),
                format!("{first} and {second} {background}"),
                format!("there is {first} {} {second}", relation.synonym()),
                format!("{picture} of {first} {} {second}", relation.phrase()),
            ]
        }
    }
}

/// The lemma form of a caption in the style of `Flickr8k.lemma.token.txt`: forms of "be" become
/// "be" and plural nouns singular; everything else is already a lemma in this grammar.
pub fn lemmatise(caption: &str) -> String {
    caption
        .split(' ')
        .map(|word| match word {
            "is" | "are" => "be",
            _ => SHAPES
                .iter()
                .find(|shape| shape.plural() == word)
                .map_or(word, |shape| shape.name()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A caption as the Flickr8k files write it: first letter capitalised, a spaced full stop.
pub fn flickr_style(caption: &str) -> String {
    let mut chars = caption.chars();
    match chars.next() {
        Some(first) => format!("{}{} .", first.to_uppercase(), chars.as_str()),
        None => ".".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    fn scenes(count: u64) -> Vec<(Scene, [String; 5])> {
        (0..count)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(i);
                let scene = sample_scene(&mut rng);
                let captions = captions(&scene, &mut rng);
                (scene, captions)
            })
            .collect()
    }

    fn inside_with_margin(object: &Object) -> bool {
        let low = MARGIN - 1e-12;
        let high = 1.0 - MARGIN + 1e-12;
        [object.x, object.y]
            .iter()
            .all(|c| c - object.radius >= low && c + object.radius <= high)
    }

    #[test]
    fn scenes_are_geometrically_what_they_claim() {
        let mut layouts = [0usize; 3];
        for (scene, _) in scenes(2000) {
            assert!(scene.objects.iter().all(inside_with_margin), "{scene:?}");
            assert!(
                scene
                    .objects
                    .iter()
                    .all(|o| !scene.background.clashes_with(o.colour)),
                "{scene:?}"
            );
            match scene.layout {
                Layout::Single { size } => {
                    layouts[0] += 1;
                    assert_eq!(scene.objects.len(), 1);
                    let (low, high) = size.radius_range();
                    assert!((low..=high).contains(&scene.main().radius));
                }
                Layout::Group => {
                    layouts[1] += 1;
                    assert!((2..=3).contains(&scene.objects.len()));
                    let main = scene.main();
                    for (i, a) in scene.objects.iter().enumerate() {
                        assert_eq!(
                            (a.shape, a.colour, a.radius),
                            (main.shape, main.colour, main.radius)
                        );
                        for b in &scene.objects[i + 1..] {
                            // Bounding squares must not overlap.
                            let dx = (a.x - b.x).abs();
                            let dy = (a.y - b.y).abs();
                            assert!(dx.max(dy) > 2.0 * a.radius, "{scene:?}");
                        }
                    }
                }
                Layout::Pair { relation } => {
                    layouts[2] += 1;
                    let [a, b] = scene.objects[..] else {
                        panic!("a pair has two objects: {scene:?}");
                    };
                    assert!((a.shape, a.colour) != (b.shape, b.colour));
                    assert!(relation.holds(&a, &b));
                    assert!(relation.inverse().holds(&b, &a));
                    for other in RELATIONS.into_iter().filter(|&r| r != relation) {
                        assert!(!other.holds(&a, &b), "{other:?} also holds in {scene:?}");
                    }
                }
            }
        }
        assert!(layouts.iter().all(|&n| n > 400), "{layouts:?}");
    }

    #[test]
    fn captions_are_distinct_short_and_name_the_main_object() {
        for (scene, captions) in scenes(2000) {
            let distinct: BTreeSet<&String> = captions.iter().collect();
            assert_eq!(distinct.len(), 5, "{captions:?}");
            let main = scene.main();
            for caption in &captions {
                let words: Vec<&str> = caption.split(' ').collect();
                assert!((4..=14).contains(&words.len()), "{caption}");
                assert!(words.contains(&main.colour.name()), "{caption}");
                assert!(
                    words.contains(&main.shape.name()) || words.contains(&main.shape.plural()),
                    "{caption}"
                );
                assert!(!caption.contains("a orange") && !caption.contains("a image"));
            }
        }
    }

    #[test]
    fn vocabulary_is_small() {
        let words: BTreeSet<String> = scenes(3000)
            .into_iter()
            .flat_map(|(_, captions)| captions)
            .flat_map(|c| c.split(' ').map(str::to_string).collect::<Vec<_>>())
            .collect();
        assert!(
            (40..=70).contains(&words.len()),
            "{} words: {words:?}",
            words.len()
        );
    }

    #[test]
    fn captions_follow_the_scene() {
        let red_circle = Object {
            shape: Shape::Circle,
            colour: Colour::Red,
            x: 0.5,
            y: 0.2,
            radius: 0.1,
        };
        let orange_cross = Object {
            shape: Shape::Cross,
            colour: Colour::Orange,
            x: 0.5,
            y: 0.7,
            radius: 0.1,
        };
        let scene = Scene {
            background: Background::Gray,
            layout: Layout::Pair {
                relation: Relation::Above,
            },
            objects: vec![red_circle, orange_cross],
        };
        let captions = captions(&scene, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(captions[0], "a red circle above an orange cross");
        assert_eq!(captions[1], "an orange cross below a red circle");
        assert_eq!(
            captions[2],
            "a red circle and an orange cross on a gray background"
        );
        assert_eq!(captions[3], "there is a red circle over an orange cross");
        assert!(captions[4].ends_with("of a red circle above an orange cross"));
    }

    #[test]
    fn lemmas_and_flickr_style() {
        assert_eq!(
            lemmatise("two green triangles are on a white background"),
            "two green triangle be on a white background"
        );
        assert_eq!(lemmatise("the crosses are red"), "the cross be red");
        assert_eq!(lemmatise("the star is blue"), "the star be blue");
        assert_eq!(flickr_style("a red circle"), "A red circle .");
    }
}
