package web

import (
	"cmp"
	"math"
	"slices"
)

// The graph is laid out in layers, callers left of callees (Sugiyama's
// scheme, simplified): it is deterministic, costs O((V+E)·sweeps), and
// reads like a request's path through the mesh. A force layout would be
// prettier for small meshes but costs O(V²) per iteration and moves nodes
// between refreshes. The layout depends only on the node and edge sets, so
// the browser keeps its positions while traffic merely changes rates.
const (
	layerGap = 250.0 // between layers
	subGap   = 210.0 // between the columns of a layer too tall for one
	rowGap   = 36.0  // room for a label above each node
	margin   = 40.0
	// A layer taller than the column height wraps into more columns;
	// the height is chosen to make the canvas about aspect times as wide
	// as it is tall (a browser window beside the side panel), but never
	// under minRows, so that small meshes do not wrap at all.
	aspect  = 1.6
	minRows = 12
	// minIdleCols is the least width, in columns, of the grid of services
	// without traffic, drawn under the graph.
	minIdleCols = 6
	// sweeps of the barycentre ordering: the gain after four is small.
	sweeps = 4
)

// layout sets X, Y and Layer of every node and returns the canvas size.
// Nodes connected by an edge form the layered graph; the rest (services
// without traffic in the window) form a grid below it.
func layout(nodes []GraphNode, edges []GraphEdge) (width, height float64) {
	idx := make(map[string]int, len(nodes))
	for i, n := range nodes {
		idx[n.ID] = i
	}
	n := len(nodes)
	succ := make([][]int, n)
	pred := make([][]int, n)
	connected := make([]bool, n)
	for _, e := range edges {
		s, okS := idx[e.Source]
		d, okD := idx[e.Destination]
		if !okS || !okD {
			continue
		}
		connected[s], connected[d] = true, true
		if s != d {
			succ[s] = append(succ[s], d)
		}
	}

	// Break cycles: drop the edges a depth-first search finds going back
	// to a node still on its stack. Iterative, so a long chain cannot
	// overflow the goroutine stack.
	const (
		white = iota
		grey
		black
	)
	color := make([]int, n)
	dag := make([][]int, n)
	type frame struct{ v, next int }
	for root := range n {
		if color[root] != white || !connected[root] {
			continue
		}
		stack := []frame{{root, 0}}
		color[root] = grey
		for len(stack) > 0 {
			f := &stack[len(stack)-1]
			if f.next == len(succ[f.v]) {
				color[f.v] = black
				stack = stack[:len(stack)-1]
				continue
			}
			w := succ[f.v][f.next]
			f.next++
			switch color[w] {
			case white:
				dag[f.v] = append(dag[f.v], w)
				color[w] = grey
				stack = append(stack, frame{w, 0})
			case black:
				dag[f.v] = append(dag[f.v], w)
			}
		}
	}
	for v := range n {
		for _, w := range dag[v] {
			pred[w] = append(pred[w], v)
		}
	}

	// Longest-path layering in topological order (Kahn).
	layer := make([]int, n)
	indeg := make([]int, n)
	for v := range n {
		indeg[v] = len(pred[v])
	}
	var queue []int
	for v := range n {
		if connected[v] && indeg[v] == 0 {
			queue = append(queue, v)
		}
	}
	for len(queue) > 0 {
		v := queue[0]
		queue = queue[1:]
		for _, w := range dag[v] {
			layer[w] = max(layer[w], layer[v]+1)
			if indeg[w]--; indeg[w] == 0 {
				queue = append(queue, w)
			}
		}
	}

	// Longest-path layering puts every service nobody calls in the first
	// layer, however deep its callees are; pull each such source to just
	// before its nearest callee, so that its edges stay short.
	for v := range n {
		if !connected[v] || len(pred[v]) > 0 || len(dag[v]) == 0 {
			continue
		}
		nearest := math.MaxInt
		for _, w := range dag[v] {
			nearest = min(nearest, layer[w])
		}
		layer[v] = max(layer[v], nearest-1)
	}

	var layers [][]int
	for v := range n {
		if !connected[v] {
			continue
		}
		for len(layers) <= layer[v] {
			layers = append(layers, nil)
		}
		layers[layer[v]] = append(layers[layer[v]], v)
	}

	// Order each layer by the mean relative position of its neighbours
	// in the previous layer (down sweeps) or the next (up sweeps).
	pos := make([]float64, n)
	setPos := func(l []int) {
		for i, v := range l {
			pos[v] = (float64(i) + 0.5) / float64(len(l))
		}
	}
	for _, l := range layers {
		setPos(l)
	}
	bary := make([]float64, n)
	order := func(l []int, nbrs [][]int) {
		for _, v := range l {
			if len(nbrs[v]) == 0 {
				bary[v] = pos[v]
				continue
			}
			var sum float64
			for _, w := range nbrs[v] {
				sum += pos[w]
			}
			bary[v] = sum / float64(len(nbrs[v]))
		}
		slices.SortStableFunc(l, func(a, b int) int { return cmp.Compare(bary[a], bary[b]) })
		setPos(l)
	}
	for s := range sweeps {
		if s%2 == 0 {
			for i := 1; i < len(layers); i++ {
				order(layers[i], pred)
			}
		} else {
			for i := len(layers) - 2; i >= 0; i-- {
				order(layers[i], dag)
			}
		}
	}

	// Coordinates: a layer of k nodes takes ceil(k/maxRows) columns.
	sizes := make([]int, len(layers))
	for i, l := range layers {
		sizes[i] = len(l)
	}
	maxRows := columnRows(sizes)
	rows, totalCols := 0, 0
	for _, l := range layers {
		cols := (len(l) + maxRows - 1) / maxRows
		rows = max(rows, (len(l)+cols-1)/cols)
		totalCols += cols
	}
	// A short graph spreads its rows (up to twice apart) towards the
	// aspect ratio, so that a small mesh fills the screen legibly.
	graphWidth := float64(len(layers)-1)*layerGap + float64(totalCols-len(layers))*subGap + subGap
	gap := rowGap
	if rows > 1 {
		gap = min(2*rowGap, max(rowGap, graphWidth/aspect/float64(rows)))
	}
	graphHeight := float64(max(rows-1, 0)) * gap
	x := margin
	for li, l := range layers {
		cols := (len(l) + maxRows - 1) / maxRows
		per := (len(l) + cols - 1) / cols
		for i, v := range l {
			c, r := i/per, i%per
			inCol := min(per, len(l)-c*per)
			// Centre each column vertically on the tallest one.
			top := margin + (graphHeight-float64(inCol-1)*gap)/2
			nodes[v].X = x + float64(c)*subGap
			nodes[v].Y = top + float64(r)*gap
			nodes[v].Layer = li
		}
		x += float64(cols-1)*subGap + layerGap
		width = max(width, nodes[l[len(l)-1]].X)
	}

	// Services without traffic: a grid under the graph, in name order.
	y0 := margin
	if len(layers) > 0 {
		y0 = margin + graphHeight + 2*rowGap
	}
	idleCols := max(minIdleCols, int((width-margin)/subGap)+1)
	var idle int
	for v := range n {
		if connected[v] {
			continue
		}
		nodes[v].X = margin + float64(idle%idleCols)*subGap
		nodes[v].Y = y0 + float64(idle/idleCols)*rowGap
		nodes[v].Layer = -1
		width = max(width, nodes[v].X)
		idle++
	}
	height = margin + graphHeight
	if idle > 0 {
		height = y0 + float64((idle-1)/idleCols)*rowGap
	}
	// Room for the labels right of the last column and under the last row.
	return math.Round(width + subGap), math.Round(height + margin)
}

// columnRows is the column height, in nodes, for layers of these sizes:
// the one whose canvas is closest to the aspect ratio, at least minRows
// (or the tallest layer, when smaller).
func columnRows(sizes []int) int {
	tallest := 0
	for _, k := range sizes {
		tallest = max(tallest, k)
	}
	best, bestScore := tallest, math.Inf(1)
	for r := min(minRows, tallest); r <= tallest; r++ {
		w := float64(len(sizes)-1)*layerGap + subGap
		rows := 0
		for _, k := range sizes {
			cols := (k + r - 1) / r
			w += float64(cols-1) * subGap
			rows = max(rows, (k+cols-1)/cols)
		}
		h := float64(rows) * rowGap
		if score := math.Abs(math.Log(w / h / aspect)); score < bestScore {
			best, bestScore = r, score
		}
	}
	return max(best, 1)
}
