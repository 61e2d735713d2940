# gnuplot -e "csv='DIR/results.csv'; out='DIR/offload.png'" plot.gp  (reads DIR/curve.dat)
dir = system("dirname ".csv)
dat = dir."/curve.dat"
stats dat index 1 using 1 nooutput name "TD"
stats dat index 1 using 2 nooutput name "TP"
stats dat index 1 using 3 nooutput name "RD"
set terminal pngcairo size 1200,480 font ",10"
set output out
set multiplot layout 1,2 title "llamoe memory mode on the CPU: production:8:2, 4 layers x 8 experts x 21 MiB, 1 rank, 2 threads"
set logscale x 2
set xlabel "expert budget per rank (MiB)"
set key bottom right
set grid
set ylabel "tokens/s"
set logscale y
plot dat index 0 using 1:2 with linespoints lw 2 title "decode, memory mode", \
     dat index 0 using 1:3 with linespoints lw 2 title "prefill (256 tokens), memory mode", \
     TD_max with lines dt 2 lc 1 title "decode, throughput mode", \
     TP_max with lines dt 2 lc 2 title "prefill, throughput mode"
unset logscale y
set ylabel "peak RSS (MiB)"
set yrange [0:*]
set key top left
plot dat index 0 using 1:4 with linespoints lw 2 title "decode run, memory mode", \
     dat index 0 using 1:5 with linespoints lw 2 title "prefill run, memory mode", \
     RD_max with lines dt 2 lc 1 title "throughput mode", \
     x with lines dt 3 lc rgb "gray" title "budget"
unset multiplot
