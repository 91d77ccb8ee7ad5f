//! Tests of the backbone API: real-photo classification with the pretrained weights (the check
//! that architecture, padding and input scaling really match the weights), strict loading,
//! checkpoint caching, and a throughput report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::RgbImage;
use tch::{nn, Device, Kind, Tensor};

use super::*;

/// ImageNet ids of the domestic cat classes: tabby, tiger cat, Persian, Siamese, Egyptian cat.
const CAT_CLASSES: [i64; 5] = [281, 282, 283, 284, 285];
/// ImageNet ids a cup of coffee may fairly be called: coffee mug, espresso, cup.
const COFFEE_CLASSES: [i64; 3] = [504, 967, 968];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the stages crate lives inside the repository")
        .to_path_buf()
}

/// The EfficientNet-Lite0 checkpoint: `ONENET_EFFICIENTNET_WEIGHTS`, or where `make setup` puts
/// it. Missing weights fail the test: `make test` installs them first, so absence is a setup bug.
fn efficientnet_weights() -> PathBuf {
    let path = std::env::var_os("ONENET_EFFICIENTNET_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("weights/efficientnet-lite0-57934424.pth"));
    assert!(
        path.is_file(),
        "EfficientNet-Lite0 weights not found at {}: run `make setup` (or set \
         ONENET_EFFICIENTNET_WEIGHTS to the checkpoint)",
        path.display()
    );
    path
}

fn photo(name: &str) -> RgbImage {
    let path = repo_root().join("tests/fixtures/photos").join(name);
    onenet_stages::image_file::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .rgb
}

/// The five most probable classes of an image, as (class id, probability).
type Top5 = Vec<(i64, f64)>;

/// The five most probable classes of each row of `logits`.
fn top5(logits: &Tensor) -> Vec<Top5> {
    let probabilities = logits.softmax(-1, Kind::Float);
    let (values, indices) = probabilities.topk(5, -1, true, true);
    (0..logits.size()[0])
        .map(|row| {
            (0..5)
                .map(|k| {
                    (
                        indices.int64_value(&[row, k]),
                        values.double_value(&[row, k]),
                    )
                })
                .collect()
        })
        .collect()
}

/// Classifies the cat and the coffee photos; returns their top-5 lists.
fn classify_photos(backbone: &Backbone) -> (Top5, Top5) {
    let batch = Tensor::stack(
        &[
            backbone.preprocess(&photo("chelsea.png")),
            backbone.preprocess(&photo("coffee.png")),
        ],
        0,
    );
    let mut tops = top5(&backbone.classify(&batch).to_device(Device::Cpu));
    let coffee = tops.pop().unwrap();
    let cat = tops.pop().unwrap();
    (cat, coffee)
}

fn assert_recognised(cat: &[(i64, f64)], coffee: &[(i64, f64)]) {
    assert!(
        cat.iter().any(|(id, _)| CAT_CLASSES.contains(id)),
        "no cat class in the top 5 of chelsea.png: {cat:?}"
    );
    assert!(
        coffee.iter().any(|(id, _)| COFFEE_CLASSES.contains(id)),
        "no coffee class in the top 5 of coffee.png: {coffee:?}"
    );
}

#[test]
fn efficientnet_lite0_recognises_photos() {
    let backbone = Backbone::load(
        BackboneKind::EfficientNetLite0,
        Some(&efficientnet_weights()),
        Device::Cpu,
    )
    .unwrap();
    let (cat, coffee) = classify_photos(&backbone);
    println!("chelsea.png top 5: {cat:?}\ncoffee.png top 5: {coffee:?}");
    assert_recognised(&cat, &coffee);
    // A confident cat, not a lucky fifth place.
    assert!(CAT_CLASSES.contains(&cat[0].0), "{cat:?}");

    let features = backbone.features(&backbone.preprocess(&photo("coffee.png")).unsqueeze(0));
    assert_eq!(features.size(), [1, 1280]);
    assert!(
        features.min().double_value(&[]) >= 0.0,
        "pooled ReLU6 outputs"
    );
}

#[test]
fn inception_v3_recognises_photos_when_weights_given() {
    let Some(weights) = std::env::var_os("ONENET_INCEPTION_WEIGHTS") else {
        println!(
            "note: ONENET_INCEPTION_WEIGHTS is not set; skipping the InceptionV3 photo check \
             (shapes and parameter count are tested with random weights)"
        );
        return;
    };
    let backbone = Backbone::load(
        BackboneKind::InceptionV3,
        Some(Path::new(&weights)),
        Device::Cpu,
    )
    .unwrap();
    let (cat, coffee) = classify_photos(&backbone);
    println!("chelsea.png top 5: {cat:?}\ncoffee.png top 5: {coffee:?}");
    assert_recognised(&cat, &coffee);
}

/// The alternatives a TensorFlow-trained EfficientNet port might expect.
const PADDINGS: [(&str, Padding); 2] = [
    ("tf-same", Padding::TfSame),
    ("symmetric", Padding::Symmetric([0, 0])),
];
const SCALINGS: [InputScaling; 3] = [
    InputScaling::TfCentered,
    InputScaling::ImageNetMeanStd,
    InputScaling::UnitRange,
];

/// The whole image (first) and ten crops of it (half and 70% of each side, at the four corners
/// and the centre): more views of the same labelled photo make small differences in fit
/// measurable.
fn views(image: &RgbImage) -> Vec<RgbImage> {
    let (width, height) = image.dimensions();
    let mut views = vec![image.clone()];
    for fraction in [0.5, 0.7] {
        let (w, h) = (
            (f64::from(width) * fraction) as u32,
            (f64::from(height) * fraction) as u32,
        );
        let corners = [
            (0, 0),
            (width - w, 0),
            (0, height - h),
            (width - w, height - h),
            ((width - w) / 2, (height - h) / 2),
        ];
        for (x, y) in corners {
            views.push(image::imageops::crop_imm(image, x, y, w, h).to_image());
        }
    }
    views
}

/// `[N, 3, 224, 224]` of `images`, resized and scaled by `scaling`.
fn scaled_batch(images: &[RgbImage], scaling: InputScaling) -> Tensor {
    let inputs: Vec<Tensor> = images
        .iter()
        .map(|image| {
            let resized =
                image::imageops::resize(image, 224, 224, image::imageops::FilterType::Triangle);
            Tensor::from_slice(&scaling.values(&resized)).view([3, 224, 224])
        })
        .collect();
    Tensor::stack(&inputs, 0)
}

/// How EfficientNet-Lite0 with the real weights, padded by `padding` and fed inputs scaled by
/// `scaling`, sees the photos.
struct VariantResult {
    /// Top 5 of the whole cat and coffee photos.
    cat_top5: Top5,
    coffee_top5: Top5,
    /// Mean over the views of each photo of ln P(right classes): the cat classes for the cat
    /// photo, the coffee classes for the coffee photo.
    cat_log_probability: f64,
    coffee_log_probability: f64,
}

fn efficientnet_variant(
    tensors: &[(String, Tensor)],
    padding: Padding,
    scaling: InputScaling,
) -> VariantResult {
    let store = nn::VarStore::new(Device::Cpu);
    let net = EfficientNetLite0::with_padding(&store.root(), padding);
    assign_weights(&store, tensors, Path::new("weights"), "test").unwrap();
    let cat_views = views(&photo("chelsea.png"));
    let coffee_views = views(&photo("coffee.png"));
    let batch = scaled_batch(&[cat_views.as_slice(), &coffee_views].concat(), scaling);
    let probabilities = tch::no_grad(|| net.logits(&net.features(&batch))).softmax(-1, Kind::Float);
    let parts = probabilities.split(cat_views.len() as i64, 0);
    let (cat, coffee) = (&parts[0], &parts[1]);
    let mean_log_probability = |probabilities: &Tensor, classes: &[i64]| {
        probabilities
            .index_select(1, &Tensor::from_slice(classes))
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
            .log()
            .mean(Kind::Float)
            .double_value(&[])
    };
    // The whole photos are the first views; top5 wants logits, and log-probabilities rank alike.
    let mut whole = top5(&Tensor::stack(&[cat.get(0), coffee.get(0)], 0).log());
    let coffee_top5 = whole.pop().unwrap();
    let cat_top5 = whole.pop().unwrap();
    VariantResult {
        cat_top5,
        coffee_top5,
        cat_log_probability: mean_log_probability(cat, &CAT_CLASSES),
        coffee_log_probability: mean_log_probability(coffee, &COFFEE_CLASSES),
    }
}

/// Every combination of padding and scaling puts the right classes in the top 5 of the whole
/// photos (the network is robust to them), so the chosen combination must also be the one that
/// gives the right classes the highest probability over several views of each photo, compared
/// with changing either the padding or the scaling.
#[test]
fn efficientnet_padding_and_scaling_fit_the_photos_best() {
    let (tensors, _) = load_weights_cached(&efficientnet_weights()).unwrap();
    let chosen_scaling = BackboneKind::EfficientNetLite0.input_scaling();
    let chosen = efficientnet_variant(&tensors, Padding::TfSame, chosen_scaling);
    let alternatives = [
        (
            "symmetric padding",
            Padding::Symmetric([0, 0]),
            chosen_scaling,
        ),
        (
            "ImageNet mean/std scaling",
            Padding::TfSame,
            InputScaling::ImageNetMeanStd,
        ),
    ];
    for (name, padding, scaling) in alternatives {
        let other = efficientnet_variant(&tensors, padding, scaling);
        assert!(
            chosen.cat_log_probability > other.cat_log_probability
                && chosen.coffee_log_probability > other.coffee_log_probability,
            "{name} fits the photos as well as the chosen preprocessing: mean ln P(cat) {:.3} \
             vs {:.3}, mean ln P(coffee) {:.3} vs {:.3}",
            other.cat_log_probability,
            chosen.cat_log_probability,
            other.coffee_log_probability,
            chosen.coffee_log_probability,
        );
    }
}

/// Prints, for every combination of padding and input scaling, the top 5 of both photos and the
/// mean log-probability of the right classes over their views:
/// `cargo test -p onenet-stages efficientnet_variants -- --ignored --nocapture`.
#[test]
#[ignore = "diagnostic report, run by hand"]
fn efficientnet_variants() {
    let (tensors, _) = load_weights_cached(&efficientnet_weights()).unwrap();
    let show = |top: &[(i64, f64)]| {
        top.iter()
            .map(|(id, p)| format!("{id} {p:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, padding) in PADDINGS {
        for scaling in SCALINGS {
            let result = efficientnet_variant(&tensors, padding, scaling);
            println!(
                "{name:9} {scaling:?}: mean ln P over views: cat {:.3}, coffee {:.3}\n  \
                 chelsea: {}\n  coffee:  {}",
                result.cat_log_probability,
                result.coffee_log_probability,
                show(&result.cat_top5),
                show(&result.coffee_top5)
            );
        }
    }
}

#[test]
fn kinds_parse_and_describe_themselves() {
    assert_eq!(
        "inception_v3".parse::<BackboneKind>().unwrap(),
        BackboneKind::InceptionV3
    );
    assert_eq!(
        BackboneKind::from_name("efficientnet_lite0").unwrap(),
        BackboneKind::EfficientNetLite0
    );
    let err = BackboneKind::from_name("resnet50").unwrap_err().to_string();
    assert!(
        err.contains("resnet50") && err.contains("efficientnet_lite0"),
        "{err}"
    );
    for kind in BackboneKind::ALL {
        assert_eq!(BackboneKind::from_name(kind.name()).unwrap(), kind);
        assert_eq!(kind.to_string(), kind.name());
    }
    assert_eq!(BackboneKind::InceptionV3.input_size(), 299);
    assert_eq!(BackboneKind::InceptionV3.feature_dim(), 2048);
    assert_eq!(BackboneKind::EfficientNetLite0.input_size(), 224);
    assert_eq!(BackboneKind::EfficientNetLite0.feature_dim(), 1280);
}

#[test]
fn random_inception_v3_gives_features_and_logits() {
    let backbone = Backbone::load(BackboneKind::InceptionV3, None, Device::Cpu).unwrap();
    // A non-square image: the whole image is resized, not cropped.
    let image = RgbImage::from_fn(40, 30, |x, y| image::Rgb([x as u8 * 6, y as u8 * 8, 200]));
    let input = backbone.preprocess(&image);
    assert_eq!(input.size(), [3, 299, 299]);
    assert_eq!(input.kind(), Kind::Float);
    // [-1, 1] scaling: blue 200 -> 200 / 127.5 - 1.
    let blue = input.double_value(&[2, 150, 150]);
    assert!((blue - (200.0 / 127.5 - 1.0)).abs() < 1e-5, "{blue}");
    let batch = input.unsqueeze(0);
    assert_eq!(backbone.features(&batch).size(), [1, 2048]);
    assert_eq!(backbone.classify(&batch).size(), [1, 1000]);
}

#[test]
fn efficientnet_preprocess_scales_as_tensorflow() {
    let backbone = Backbone::load(BackboneKind::EfficientNetLite0, None, Device::Cpu).unwrap();
    let image = RgbImage::from_pixel(224, 224, image::Rgb([0, 127, 255]));
    let input = backbone.preprocess(&image);
    assert_eq!(input.size(), [3, 224, 224]);
    let scaling = BackboneKind::EfficientNetLite0.input_scaling();
    let expected = Tensor::from_slice(&[
        scaling.scale(0, 0),
        scaling.scale(1, 127),
        scaling.scale(2, 255),
    ])
    .view([3, 1, 1]);
    for channel in 0..3 {
        assert_eq!(
            input.double_value(&[channel, 10, 10]),
            expected.double_value(&[channel, 0, 0])
        );
    }
}

/// Writes the variables of a random EfficientNet-Lite0, edited by `edit`, as a safetensors file.
fn edited_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let store = nn::VarStore::new(Device::Cpu);
    let _net = EfficientNetLite0::new(&store.root());
    let mut tensors: Vec<(String, Tensor)> = store.variables().into_iter().collect();
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    checkpoint::write_safetensors(&tensors, &path).unwrap();
    path
}

fn load_error(path: &Path) -> String {
    match Backbone::load(BackboneKind::EfficientNetLite0, Some(path), Device::Cpu) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loading_checks_every_tensor() {
    let dir = tempfile::tempdir().unwrap();

    let complete = edited_weights(dir.path(), |tensors| {
        // Batch-norm counters are allowed (and ignored).
        tensors.push(("_bn0.num_batches_tracked".into(), Tensor::from(3i64)));
    });
    Backbone::load(
        BackboneKind::EfficientNetLite0,
        Some(&complete),
        Device::Cpu,
    )
    .unwrap();

    let missing = edited_weights(dir.path(), |tensors| {
        tensors.retain(|(name, _)| name != "_blocks.3._bn1.running_var")
    });
    let err = load_error(&missing);
    assert!(
        err.contains("edited.safetensors")
            && err.contains("`_blocks.3._bn1.running_var` is missing")
            && err.contains("[144]"),
        "{err}"
    );

    let reshaped = edited_weights(dir.path(), |tensors| {
        for (name, tensor) in tensors.iter_mut() {
            if name == "_fc.weight" {
                *tensor = Tensor::zeros([10, 1280], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load_error(&reshaped);
    assert!(
        err.contains("`_fc.weight` has shape [10, 1280], expected shape [1000, 1280]"),
        "{err}"
    );

    let extra = edited_weights(dir.path(), |tensors| {
        tensors.push((
            "_fc2.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
    });
    let err = load_error(&extra);
    assert!(err.contains("unexpected tensor `_fc2.weight`"), "{err}");

    let err = load_error(&dir.path().join("absent.pth"));
    assert!(err.contains("absent.pth"), "{err}");
}

#[test]
fn checkpoints_are_cached_as_safetensors_by_content_hash() {
    let dir = tempfile::tempdir().unwrap();
    let pth = dir.path().join("small.pth");
    std::fs::write(&pth, checkpoint::tests::sample_legacy_checkpoint()).unwrap();
    let hash = blake3::hash(&std::fs::read(&pth).unwrap()).to_hex()[..16].to_string();
    let cache = dir.path().join(format!("small.{hash}.safetensors"));

    let (first, source) = load_weights_cached(&pth).unwrap();
    assert_eq!(source, WeightsSource::Converted(cache.clone()));
    assert!(cache.is_file());
    let (second, source) = load_weights_cached(&pth).unwrap();
    assert_eq!(source, WeightsSource::Cache(cache.clone()));
    // The cache leaves the batch-norm counter out; everything else is identical.
    assert_eq!(first.len(), second.len() + 1);
    for (name, tensor) in &second {
        let original = &first.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(original.to_kind(Kind::Float).equal(tensor), "{name}");
    }
    // No temporary files are left behind: the checkpoint, the cache and its hash.
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 3);

    // A corrupt cache is rebuilt.
    std::fs::write(&cache, b"garbage").unwrap();
    let (_, source) = load_weights_cached(&pth).unwrap();
    assert_eq!(source, WeightsSource::Converted(cache.clone()));
    assert!(checkpoint::read_safetensors(&cache).is_ok());

    // So is one that still parses but whose values were changed: the key covers the
    // checkpoint, not the cache, so the cache is read only as it was written.
    let mut bytes = std::fs::read(&cache).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&cache, &bytes).unwrap();
    assert!(checkpoint::read_safetensors(&cache).is_ok(), "still parses");
    let (third, source) = load_weights_cached(&pth).unwrap();
    assert_eq!(source, WeightsSource::Converted(cache.clone()));
    for (name, tensor) in &second {
        let rebuilt = &third.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(rebuilt.equal(tensor), "{name}");
    }
}

/// Reports images per second of `features` at several batch sizes on one and two threads:
/// `cargo test -p onenet-stages backbone_throughput -- --ignored --nocapture`. (The dev profile
/// is fine: the time is spent inside libtorch, which is always optimised.)
#[test]
#[ignore = "benchmark, run by hand"]
fn backbone_throughput() {
    for kind in BackboneKind::ALL {
        // Speed does not depend on the weights' values.
        let backbone = Backbone::load(kind, None, Device::Cpu).unwrap();
        let side = i64::from(backbone.input_size());
        for threads in [1, 2] {
            tch::set_num_threads(threads);
            for batch_size in [1i64, 4, 8, 16] {
                let batch = Tensor::randn([batch_size, 3, side, side], (Kind::Float, Device::Cpu));
                let _warm_up = backbone.features(&batch);
                // Timed calls until two seconds have passed; the median resists other load on
                // the machine, the best call shows what an idle machine does.
                let start = Instant::now();
                let mut seconds = Vec::new();
                while start.elapsed() < Duration::from_secs(2) || seconds.len() < 3 {
                    let call = Instant::now();
                    let _ = backbone.features(&batch);
                    seconds.push(call.elapsed().as_secs_f64());
                }
                seconds.sort_by(f64::total_cmp);
                let rate = |s: f64| batch_size as f64 / s;
                println!(
                    "{kind} threads {threads} batch {batch_size:2}: {:6.1} images/s median, \
                     {:6.1} best ({} calls)",
                    rate(seconds[seconds.len() / 2]),
                    rate(seconds[0]),
                    seconds.len()
                );
            }
        }
    }
}

#[test]
fn features_do_not_depend_on_the_input_layout() {
    tch::manual_seed(5);
    for kind in [BackboneKind::EfficientNetLite0, BackboneKind::InceptionV3] {
        let backbone = Backbone::load(kind, None, Device::Cpu).unwrap();
        let side = i64::from(kind.input_size());
        let batch = Tensor::rand([2, 3, side, side], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let channels_last = backbone.features(&batch);
        let default_layout = tch::no_grad(|| backbone.network.features(&batch));
        let error = (&channels_last - &default_layout)
            .abs()
            .max()
            .double_value(&[]);
        let scale = default_layout.abs().max().double_value(&[]);
        assert!(
            error <= 1e-4 * scale.max(1.0),
            "{kind}: max difference {error} (scale {scale})"
        );
    }
}

/// A 224-px picture of a `colour` square (`filled`: a full square, else a frame) on gray.
fn coloured_shape(colour: [u8; 3], filled: bool) -> RgbImage {
    RgbImage::from_fn(224, 224, |x, y| {
        let inside = (60..164).contains(&x) && (60..164).contains(&y);
        let hollow = (84..140).contains(&x) && (84..140).contains(&y);
        if inside && (filled || !hollow) {
            image::Rgb(colour)
        } else {
            image::Rgb([128, 128, 128])
        }
    })
}

#[test]
fn multiscale_pooling_adds_middle_stages_and_keeps_colour_apart() {
    let weights = efficientnet_weights();
    let backbone = Backbone::load(BackboneKind::EfficientNetLite0, Some(&weights), Device::Cpu)
        .unwrap()
        .with_pooling(Pooling::Multiscale)
        .unwrap();
    assert_eq!(backbone.feature_dim(), 2024);
    let colours = [
        [35, 80, 235],
        [150, 50, 195],
        [250, 140, 20],
        [250, 225, 30],
    ];
    let pictures: Vec<RgbImage> = [true, false]
        .into_iter()
        .flat_map(|filled| colours.map(|c| coloured_shape(c, filled)))
        .collect();
    let batch = Tensor::stack(
        &pictures
            .iter()
            .map(|p| backbone.preprocess(p))
            .collect::<Vec<_>>(),
        0,
    );
    let multiscale = backbone.features(&batch);
    assert_eq!(multiscale.size(), [8, 2024]);
    // The last 1280 columns are the final pooling's features.
    let plain = Backbone::load(BackboneKind::EfficientNetLite0, Some(&weights), Device::Cpu)
        .unwrap()
        .features(&batch);
    let tail = multiscale.narrow(1, 2024 - 1280, 1280);
    let error = (&tail - &plain).abs().max().double_value(&[]);
    assert!(error <= 1e-5, "final columns differ by {error}");
    // How far apart pictures differing in colour are, relative to pictures differing in shape.
    let colour_over_shape = |features: &Tensor| {
        let unit = features / features.norm_scalaropt_dim(2, [1], true);
        let distance = |a: i64, b: i64| 1.0 - unit.get(a).dot(&unit.get(b)).double_value(&[]);
        let (mut by_colour, mut by_shape) = (Vec::new(), Vec::new());
        for a in 0..8i64 {
            for b in a + 1..8 {
                if a / 4 == b / 4 {
                    by_colour.push(distance(a, b));
                } else if a % 4 == b % 4 {
                    by_shape.push(distance(a, b));
                }
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        mean(&by_colour) / mean(&by_shape)
    };
    let middle = multiscale.narrow(1, 0, 2024 - 1280);
    let (in_middle, in_final) = (colour_over_shape(&middle), colour_over_shape(&plain));
    eprintln!("colour/shape distance ratio: middle stages {in_middle:.3}, final map {in_final:.3}");
    assert!(
        in_middle > in_final,
        "middle {in_middle} <= final {in_final}"
    );
}

/// Two squares side by side, `left` and `right` coloured, on grey.
fn two_squares(left: [u8; 3], right: [u8; 3]) -> RgbImage {
    RgbImage::from_fn(224, 224, |x, y| {
        let square = |x0: u32| (x0..x0 + 72).contains(&x) && (76..148).contains(&y);
        if square(20) {
            image::Rgb(left)
        } else if square(132) {
            image::Rgb(right)
        } else {
            image::Rgb([128, 128, 128])
        }
    })
}

#[test]
fn grid_pooling_gives_one_multiscale_vector_per_region() {
    let weights = efficientnet_weights();
    let load = |pooling: Pooling| {
        Backbone::load(BackboneKind::EfficientNetLite0, Some(&weights), Device::Cpu)
            .unwrap()
            .with_pooling(pooling)
            .unwrap()
    };
    let (grid, multiscale) = (load(Pooling::Grid), load(Pooling::Multiscale));
    assert_eq!(grid.feature_dim(), 16 * 2024);
    let (red, blue) = ([220, 30, 35], [35, 80, 235]);
    let pictures = [two_squares(red, blue), two_squares(blue, red)];
    let batch = Tensor::stack(
        &pictures
            .iter()
            .map(|p| grid.preprocess(p))
            .collect::<Vec<_>>(),
        0,
    );
    let regions = grid.features(&batch).view([2, 16, 2024]);
    let global = multiscale.features(&batch);
    // The first kept map (40 channels, 28×28 at 224 px) splits into 7×7 cells: the mean of the
    // regions is its global average, so the layout is region-major with multi-scale channels.
    let first = regions
        .narrow(2, 0, 40)
        .mean_dim([1i64].as_slice(), false, Kind::Float);
    let error = (&first - global.narrow(1, 0, 40))
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        error <= 1e-4,
        "regions' mean differs from the average by {error}"
    );
    // Swapping the colours leaves the global averages almost unchanged; the regions see it.
    let distance = |features: &Tensor| {
        let unit = features / features.norm_scalaropt_dim(2, [1], true);
        1.0 - unit.get(0).dot(&unit.get(1)).double_value(&[])
    };
    let (swap_global, swap_regions) = (distance(&global), distance(&regions.flatten(1, -1)));
    eprintln!(
        "colour swap: cosine distance {swap_global:.4} globally, {swap_regions:.4} by region"
    );
    assert!(
        swap_regions > 5.0 * swap_global,
        "regions {swap_regions} vs global {swap_global}"
    );
}

#[test]
fn pooling_names_and_kinds_that_lack_one() {
    assert_eq!(
        Pooling::from_name("multiscale").unwrap(),
        Pooling::Multiscale
    );
    assert_eq!(Pooling::from_name("final").unwrap(), Pooling::Final);
    assert!(Pooling::from_name("max")
        .unwrap_err()
        .to_string()
        .contains("final, multiscale"));
    let inception = Backbone::load(BackboneKind::InceptionV3, None, Device::Cpu).unwrap();
    let error = inception.with_pooling(Pooling::Multiscale).err().unwrap();
    assert!(error.to_string().contains("inception_v3"), "{error}");
    let inception = Backbone::load(BackboneKind::InceptionV3, None, Device::Cpu).unwrap();
    assert!(inception.with_pooling(Pooling::Grid).is_err());
    assert_eq!(Pooling::from_name("grid").unwrap(), Pooling::Grid);
    let as_stage_error = onenet_stages::StageError::from(error);
    assert!(
        matches!(&as_stage_error, onenet_stages::StageError::Param { name, .. } if name == "pooling"),
        "{as_stage_error:?}"
    );
    assert_eq!(
        BackboneKind::EfficientNetLite0
            .pooled_dim(Pooling::Final)
            .unwrap(),
        1280
    );
}

/// The stated tolerance of bf16 features: each image's cosine with its f32 features is at least
/// 0.995, for the final and the multi-scale pooling (measured: 0.998 on the photos).
#[test]
fn bf16_features_stay_close_to_f32_and_keep_the_classes() {
    let weights = efficientnet_weights();
    let load = |precision: Precision, pooling: Pooling| {
        Backbone::load(BackboneKind::EfficientNetLite0, Some(&weights), Device::Cpu)
            .unwrap()
            .with_pooling(pooling)
            .unwrap()
            .with_precision(precision)
    };
    let bf16 = load(Precision::Bf16, Pooling::Final);
    let (cat, coffee) = classify_photos(&bf16);
    assert_recognised(&cat, &coffee);
    let (cat_f32, coffee_f32) = classify_photos(&load(Precision::F32, Pooling::Final));
    assert_eq!(cat[0].0, cat_f32[0].0, "{cat:?} vs {cat_f32:?}");
    assert_eq!(coffee[0].0, coffee_f32[0].0, "{coffee:?} vs {coffee_f32:?}");

    for pooling in Pooling::ALL {
        let (exact, fast) = (
            load(Precision::F32, pooling),
            load(Precision::Bf16, pooling),
        );
        let batch = Tensor::stack(
            &[
                exact.preprocess(&photo("chelsea.png")),
                exact.preprocess(&photo("coffee.png")),
            ],
            0,
        );
        let (a, b) = (exact.features(&batch), fast.features(&batch));
        assert_eq!(b.kind(), Kind::Float);
        assert_eq!(a.size(), b.size());
        let cosine = (&a * &b).sum_dim_intlist(1, false, Kind::Float)
            / (a.norm_scalaropt_dim(2, [1], false) * b.norm_scalaropt_dim(2, [1], false));
        let worst = cosine.min().double_value(&[]);
        assert!(worst >= 0.995, "{pooling:?}: cosine {worst}");
    }
}
