#!/usr/bin/env bash
# The demo tour `make demo` ends with: runs the pipeline (reusing whatever is cached), then shows
# the measured quality and each of the four tasks on the demo's test pictures.
set -euo pipefail
onenet=${ONENET:-target/release/onenet}
say() { printf '\n== %s\n' "$*"; }

say "onenet run   (stages already computed are reused)"
"$onenet" run

say "onenet query   (the headline test metrics: BLEU-4, CIDEr-D, captions true of their picture, retrieval R@1)"
"$onenet" query "select metric, method, round(value, 3) as value from evaluate.metrics
  where metric in ('bleu4', 'cider_d', 'truth_accuracy', 'r1') and method in ('greedy', 'beam', 'invert')
  order by metric, method"
echo "(onenet metrics lists every metric)"

demo=artifacts/latest/demo
mapfile -t test_images < <(head -n 4 "$demo/Flickr8k_text/Flickr_8k.testImages.txt")
paths=()
for image in "${test_images[@]}"; do paths+=("$demo/Flicker8k_Dataset/$image"); done

say "onenet caption --beam 3   (four test pictures; their reference captions follow)"
"$onenet" caption --beam 3 "${paths[@]}"
for image in "${test_images[@]}"; do
  grep -F "$image#0" "$demo/Flickr8k_text/Flickr8k.token.txt" | sed 's/^/  reference  /'
done

say "onenet similar-images --id ${test_images[0]} -k 3"
"$onenet" similar-images --id "${test_images[0]}" -k 3

say "onenet similar-words"
"$onenet" similar-words red -k 4
"$onenet" similar-words circle -k 4

say "onenet similar-captions"
"$onenet" similar-captions "a red star above a blue circle" -k 3

say "onenet find-images   (two test captions, optimised together)"
caption_a=$(grep -F "${test_images[1]}#1" "$demo/Flickr8k_text/Flickr8k.token.txt" | cut -f2)
caption_b=$(grep -F "${test_images[2]}#1" "$demo/Flickr8k_text/Flickr8k.token.txt" | cut -f2)
echo "(pictures the captions were written for: ${test_images[1]}, ${test_images[2]})"
"$onenet" find-images "$caption_a" "$caption_b" -k 3

say "Open the tables with Polars or DuckDB, e.g."
echo "  python3 -c \"import polars as pl; print(pl.read_parquet('artifacts/latest/evaluate/metrics.parquet'))\""

say "The report: pipeline, metrics, training curves, t-SNE maps, captions and retrievals in one page"
echo "  $PWD/artifacts/latest/report/report.html"
echo "  (open it in a browser; it needs no server and no network)"
