cd /work/main
export HOME=/tmp GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=4294967296
R=benchmarks/results/uncertainty_growth
D=/tmp/rk/sfm; .venv/bin/reloc-eval --map /tmp/s4i/ace_sfm.map.safetensors --dataset $D --frames $D/query.txt --refine --json $R/ace_refine_sfm.json --plots $R/ace_refine_sfm > /tmp/s4i/p1.log 2>&1
D=../shared/data/7scenes-redkitchen; .venv/bin/reloc-eval --map /tmp/s4i/ace_dslam.map.safetensors --dataset $D --frames $D/query.txt --refine --json $R/ace_refine_dslam.json --plots $R/ace_refine_dslam > /tmp/s4i/p2.log 2>&1
echo PLOTSDONE
