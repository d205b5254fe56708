set -x
cd /work/main
export HOME=/tmp GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
for ps in sfm dslam; do
  if [ $ps = sfm ]; then D=/tmp/rk/sfm; else D=../shared/data/7scenes-redkitchen; fi
  NAMES=$(.venv/bin/python -c "from reloc_ros.map_file import read_metadata; print(','.join(read_metadata('/tmp/rk/ace_$ps.map.safetensors')['uncertainty']['holdout']['names']))")
  for st in 2 4; do
    M=/tmp/s4/ace_${ps}_s$st.map.safetensors
    cp /tmp/rk/ace_$ps.map.safetensors $M; cp /tmp/rk/ace_$ps.ref.safetensors /tmp/s4/ace_${ps}_s$st.ref.safetensors
    .venv/bin/reloc-calibrate --map $M --dataset $D --frames $NAMES --front-end-options "{\"cell_stride\": $st}" > /tmp/s4/cal_${ps}_s$st.log 2>&1
    .venv/bin/reloc-eval --map $M --dataset $D --frames $D/query.txt --json /tmp/s4/eval_${ps}_s${st}.json > /tmp/s4/eval_${ps}_s$st.log 2>&1
    .venv/bin/reloc-eval --map $M --dataset $D --frames $D/query.txt --refine --json /tmp/s4/eval_${ps}_s${st}_ref.json > /tmp/s4/eval_${ps}_s${st}_ref.log 2>&1
  done
done
echo S4DONE
