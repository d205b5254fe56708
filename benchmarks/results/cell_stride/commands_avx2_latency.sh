cd /work/main
export HOME=/tmp GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
D=../shared/data/7scenes-redkitchen
for i in 1 2; do
for st in 2 4; do
  .venv/bin/reloc-eval --map /tmp/s4/ace_dslam_s$st.map.safetensors --dataset $D --frames $D/query.txt --refine --json /tmp/s4/avx2_s${st}_ref_run$i.json > /tmp/s4/avx2_s${st}_run$i.log 2>&1
done; done
echo LATDONE
