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
plot for [i=0:2] "plotdata/bytes.dat" index i using 1:2 with points pt 7 ps 1.5 lc i+1 title columnheader(1), for [i=0:2] "plotdata/bytes.dat" index i using 1:3 with lines lc i+1 notitle
set output "model_efficiency.png"
set title "MODELLED scaling efficiency (solid: measured CPU compute + modelled links; dashed: Llama-3.1-8B shape, H100 roofline + links)"
set xlabel 'ranks P (8 per node)'
set ylabel 'efficiency T(1) / (P T(P))'
set logscale x 2
set yrange [0:1.1]
plot for [i=0:3] "plotdata/model.dat" index i using 1:2 with linespoints lc i+1 title columnheader(1), for [i=0:3] "plotdata/model.dat" index i using 1:3 with linespoints dt 2 lc i+1 notitle
