set -x
cd /work/main
export HOME=/tmp GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
for ps in sfm dslam; do
  if [ $ps = sfm ]; then D=/tmp/rk/sfm; else D=../shared/data/7scenes-redkitchen; fi
  NAMES=$(.venv/bin/python -c "from reloc_ros.map_file import read_metadata; print(','.join(read_metadata('/tmp/rk/ace_$ps.map.safetensors')['uncertainty']['holdout']['names']))")
  M=/tmp/s4i/ace_$ps.map.safetensors
  cp /tmp/rk/ace_$ps.map.safetensors $M; cp /tmp/rk/ace_$ps.ref.safetensors /tmp/s4i/ace_$ps.ref.safetensors
  .venv/bin/reloc-calibrate --map $M --dataset $D --frames $NAMES --front-end-options '{"cell_stride": 4}' > /tmp/s4i/cal_$ps.log 2>&1
  .venv/bin/reloc-eval --map $M --dataset $D --frames $D/query.txt --json /tmp/s4i/eval_${ps}.json > /tmp/s4i/eval_$ps.log 2>&1
  .venv/bin/reloc-eval --map $M --dataset $D --frames $D/query.txt --refine --json /tmp/s4i/eval_${ps}_ref.json > /tmp/s4i/eval_${ps}_ref.log 2>&1
done
echo S4IDONE
