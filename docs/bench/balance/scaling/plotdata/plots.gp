set terminal pngcairo size 1100,600 font ",10"
set termoption noenhanced
set grid ytics
set key outside right
set output "decode_breakdown.png"
set title "decode, 256 sequences: time split per step, max over ranks (MEASURED; * = oversubscribed)"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.8
set ylabel 'ms per step'
set xtics rotate by -45
unset logscale
plot for [i=2:9] "plotdata/decode_breakdown.dat" using i:xtic(1) title columnheader(i)
unset style
set xtics norotate
set output "prefill_breakdown.png"
set title "prefill, 2048 tokens: time split per step, max over ranks (MEASURED; * = oversubscribed)"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.8
set ylabel 'ms per step'
set xtics rotate by -45
unset logscale
plot for [i=2:9] "plotdata/prefill_breakdown.dat" using i:xtic(1) title columnheader(i)
unset style
set xtics norotate
set output "bytes.png"
set title "decode, 256 sequences: MB sent per rank per step (points MEASURED, lines MODELLED)"
set xlabel 'ranks P'
set ylabel 'MB per rank per step'
unset logscale
plot for [i=0:1] "plotdata/bytes.dat" index i using 1:2 with points pt 7 ps 1.5 lc i+1 title columnheader(1), for [i=0:1] "plotdata/bytes.dat" index i using 1:3 with lines lc i+1 notitle
set output "model_efficiency.png"
set title "MODELLED efficiency. solid: CPU compute measured here; dashed: 8B shape on H100, device path; dotted: 8B, host-staged"
set xlabel 'ranks P (8 per node)'
set ylabel 'efficiency T(1) / (P T(P))'
set logscale x 2
set yrange [0:1.1]
plot for [i=0:3] "plotdata/model.dat" index i using 1:2 with linespoints lc i+1 title columnheader(1), for [i=0:3] "plotdata/model.dat" index i using 1:3 with linespoints dt 2 lc i+1 notitle, for [i=0:3] "plotdata/model.dat" index i using 1:4 with linespoints dt 3 lc i+1 notitle
unset logscale
set yrange [*:*]
set terminal pngcairo size 1100,900 font ",10"
set output "balanced.png"
set multiplot layout 2,2
set logscale y
set key inside bottom right
set xlabel 'ranks P'
set title 'MEASURED here: step ms, slowest rank (dashed: balanced)'
set ylabel 'ms per step'
plot for [i=0:3:2] "plotdata/balanced.dat" index i using 1:2 with linespoints lc (i-0)/2+1 dt 1 pt 7 title columnheader(1), for [i=1:3:2] "plotdata/balanced.dat" index i using 1:2 with linespoints lc (i-0-1)/2+1 dt 3 pt 6 title columnheader(1)
set title 'MEASURED here: MB sent per rank per step (dashed: balanced)'
set ylabel 'MB'
plot for [i=0:3:2] "plotdata/balanced.dat" index i using 1:3 with linespoints lc (i-0)/2+1 dt 1 pt 7 title columnheader(1), for [i=1:3:2] "plotdata/balanced.dat" index i using 1:3 with linespoints lc (i-0-1)/2+1 dt 3 pt 6 title columnheader(1)
set title 'MODELLED, 8B on H100s: step ms (dashed: balanced)'
set ylabel 'ms per step'
plot for [i=4:7:2] "plotdata/balanced.dat" index i using 1:2 with linespoints lc (i-4)/2+1 dt 1 pt 7 title columnheader(1), for [i=5:7:2] "plotdata/balanced.dat" index i using 1:2 with linespoints lc (i-4-1)/2+1 dt 3 pt 6 title columnheader(1)
set title 'MODELLED, 8B on H100s: MB of the busiest rank per step (dashed: balanced)'
set ylabel 'MB'
plot for [i=4:7:2] "plotdata/balanced.dat" index i using 1:3 with linespoints lc (i-4)/2+1 dt 1 pt 7 title columnheader(1), for [i=5:7:2] "plotdata/balanced.dat" index i using 1:3 with linespoints lc (i-4-1)/2+1 dt 3 pt 6 title columnheader(1)
unset multiplot
unset logscale
set key outside right
set terminal pngcairo size 1100,600 font ",10"
set output "a2a_validation.png"
set title "All-to-all time, MODELLED (fitted links) against PUBLISHED, µs; lines: equal, ±25 %. DeepEP normal: its bytes at the published bandwidth"
set xlabel 'published µs'
set ylabel 'modelled µs'
set logscale xy
set key inside top left
set xrange [10:10000]
set yrange [10:10000]
plot for [i=0:2] "plotdata/validation.dat" index i using 1:2 with points pt 7 ps 1.3 lc i+1 title columnheader(1), x with lines lc rgb 'black' notitle, 1.25*x with lines dt 2 lc rgb 'gray' notitle, 0.75*x with lines dt 2 lc rgb 'gray' notitle
unset logscale
set xrange [*:*]
set yrange [*:*]
set key outside right
