use onenet_torch::model::{CaptionModel, ModelConfig};
use std::time::Instant;
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

fn main() {
    let threads: i32 = std::env::var("T")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    let model = CaptionModel::new(
        ModelConfig {
            vocab_size: 50,
            feature_dim: 1280,
            image_dim: 300,
            embed_dim: 300,
            hidden_dim: 516,
            rnn: "gru".into(),
            pretrained_dim: 0,
        },
        Device::Cpu,
    )
    .unwrap();
    let mut opt = nn::Adam::default().build(&model.vs, 1e-3).unwrap();
    let feats = Tensor::rand([64, 1280], (Kind::Float, Device::Cpu));
    let tokens = Tensor::randint_low(4, 50, [64, 14], (Kind::Int64, Device::Cpu));
    let (mut f, mut b, mut c, mut s) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..25 {
        let t0 = Instant::now();
        let loss = model.caption_loss(&model.encode_images(&feats), &tokens);
        let t1 = Instant::now();
        opt.zero_grad();
        loss.backward();
        let t2 = Instant::now();
        opt.clip_grad_norm(5.0);
        let t3 = Instant::now();
        opt.step();
        let _ = loss.double_value(&[]);
        let t4 = Instant::now();
        if i >= 5 {
            f += (t1 - t0).as_secs_f64();
            b += (t2 - t1).as_secs_f64();
            c += (t3 - t2).as_secs_f64();
            s += (t4 - t3).as_secs_f64();
        }
    }
    println!(
        "threads {threads}: per step ms: forward {:.1} backward {:.1} clip {:.1} step {:.1}",
        f * 50.,
        b * 50.,
        c * 50.,
        s * 50.
    );
}
