# Plots bench/p2p.sh's results: time for every client to get the blob
# against the number of peers, for Shoal, direct pulls from the origin and a
# central pull-through cache (both measured at the largest N only), with
# the fluid lower bound T* and the 1.3 T* target.
#
#   gnuplot -e "dat='p2p-plot.dat'; out='p2p.png'; nmax=16; fbits=1073741824; ubps=80e6" bench/p2p.gnuplot
#
# dat: "N tstar shoal direct central" per line, "-" where not measured;
# fbits: the blob's size F in bits; ubps: every uplink's rate U = u.
if (!exists("dat")) dat = 'p2p-plot.dat'
if (!exists("out")) out = 'p2p.png'
if (!exists("nmax")) nmax = 16
if (!exists("fbits")) fbits = 128 * 2**20 * 8
if (!exists("ubps")) ubps = 80e6
max(a, b) = a > b ? a : b
# The fluid bound with d unlimited: max(F/U, N*F/(U + N*u)), u = U.
tstar(n) = max(fbits / ubps, n * fbits / (ubps + n * ubps))

set terminal pngcairo size 900,600 font ",11"
set output out
set datafile missing "-"
set title "Distributing one blob to N hosts (every uplink shaped alike)"
set xlabel "peer hosts N"
set ylabel "time until the last client has the blob (s)"
set logscale x 2
set logscale y 10
set xrange [3:nmax * 1.4]
set xtics (4, 8, 16, 32, 64)
set ytics auto
set grid
set key top left box opaque

set samples 200
plot tstar(x) with lines lw 2 lc rgb "#444444" title "fluid bound T*", \
     1.3 * tstar(x) with lines dt 2 lw 1 lc rgb "#888888" title "1.3 T* (target)", \
     dat using 1:3 with linespoints pt 7 ps 1.3 lw 2 lc rgb "#1f77b4" title "Shoal P2P", \
     dat using 1:4 with points pt 5 ps 1.6 lc rgb "#d62728" title "direct from origin", \
     dat using ($1 * 1.05):5 with points pt 9 ps 1.8 lc rgb "#ff7f0e" title "central pull-through cache (warm; drawn 5 % right)"
