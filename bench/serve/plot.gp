# gnuplot -e "dat='DIR/plot.dat'; out='DIR/serve.png'; title='...'" plot.gp
# plot.dat: index 0 llamoe, index 1 llama.cpp; columns concurrency, output tok/s, TTFT p50/p99
# (ms), ITL p50/p99 (ms).
set terminal pngcairo size 1500,450 font ",10"
set output out
set multiplot layout 1,3 title "llamoe-serve vs llama-server: ".title
set logscale x 2
set xlabel "concurrent requests"
set grid
set key top left
set ylabel "output tokens/s"
plot dat index 0 using 1:2 with linespoints lw 2 title "llamoe-serve", \
     dat index 1 using 1:2 with linespoints lw 2 title "llama-server"
set logscale y
set ylabel "time to first token (ms)"
plot dat index 0 using 1:3 with linespoints lw 2 lc 1 title "llamoe-serve p50", \
     dat index 0 using 1:4 with linespoints lw 1 dt 2 lc 1 title "llamoe-serve p99", \
     dat index 1 using 1:3 with linespoints lw 2 lc 2 title "llama-server p50", \
     dat index 1 using 1:4 with linespoints lw 1 dt 2 lc 2 title "llama-server p99"
set ylabel "inter-token latency (ms)"
plot dat index 0 using 1:5 with linespoints lw 2 lc 1 title "llamoe-serve p50", \
     dat index 0 using 1:6 with linespoints lw 1 dt 2 lc 1 title "llamoe-serve p99", \
     dat index 1 using 1:5 with linespoints lw 2 lc 2 title "llama-server p50", \
     dat index 1 using 1:6 with linespoints lw 1 dt 2 lc 2 title "llama-server p99"
unset multiplot
