// The tracinflow explorer: one version's test images, their proponents and opponents, its training
// images and mislabel suspects, from window.TRACINFLOW (data.js, written by the workflow). No
// library, no network: the page opens from the file system. The URL fragment names what is shown
// (#test?..., #test/<idx>, #train/<idx>, #suspects?..., #marks), so every view can be linked to.
"use strict";

const D = window.TRACINFLOW;
const GRID_PAGE = 120;
const SUSPECT_PAGE = 60;
const MARKS_KEY = `tracinflow-marks:${location.pathname}`;

const imageAt = new Map(D.images.idx.map((idx, i) => [idx, i]));
const testAt = new Map(D.test.idx.map((idx, i) => [idx, i]));
const trainAt = new Map(D.train.idx.map((idx, i) => [idx, i]));
const missingThumbs = new Set(D.missing_thumbnails || []);
const marks = loadMarks();
let current = null; // what the keyboard acts on: {kind, idx, list}

// --- small helpers ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const className = (label) => D.classes[label];
// A name as text with its control characters made visible: a newline shows as \n, a tab as \t.
const visible = (text) => String(text).replace(/[\u0000-\u001f\u007f]/g, (c) =>
  ({ "\n": "\\n", "\t": "\\t", "\r": "\\r" })[c]
    || `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
const pathOf = (idx) => D.images.path[imageAt.get(idx)];
const shownPath = (idx) => visible(pathOf(idx) || "");
const fileName = (idx) => visible((pathOf(idx) || "").split("/").pop());
const formatInfluence = (value) => (value >= 0 ? "+" : "") + value.toPrecision(4);
const formatConfidence = (value) => (value === null ? "–" : `${(100 * value).toFixed(1)}%`);

// One row of a facts table: its name, and the value's cell (with the cell's attributes).
const fact = (name, value, attrs = {}) => el("tr", {}, el("th", {}, name), el("td", attrs, value));
// The query part of the URL fragment ("?sort=idx..."), as it stands (still encoded), kept when
// moving between images.
const hashQuery = () => {
  const at = location.hash.indexOf("?");
  return at < 0 ? "" : location.hash.slice(at);
};

function thumb(idx, extra = "") {
  if (missingThumbs.has(idx) || !imageAt.has(idx)) {
    return el("span", { class: `thumb missing ${extra}`, text: "no image" });
  }
  return el("img", {
    class: `thumb ${extra}`, src: `thumbs/${idx}.webp`, alt: shownPath(idx), loading: "lazy",
    title: shownPath(idx),
  });
}

// The fragment "#view/id?query": the query is decoded once, by URLSearchParams (which link()
// wrote it with), so "&", "+", "%" and "#" in a search survive; a malformed "%" stays as typed.
function parseHash() {
  const raw = location.hash.replace(/^#/, "");
  const at = raw.indexOf("?");
  const path = (at < 0 ? raw : raw.slice(0, at)) || "test";
  const [view, id] = path.split("/");
  return { view, id: id === undefined ? null : Number(id),
    params: new URLSearchParams(at < 0 ? "" : raw.slice(at + 1)) };
}

// The ranking a URL asks for, or the default when this version has none of that name (another
// version's link, a typo), with a note saying so.
function chosenRanking(params) {
  const asked = params.get("ranking");
  if (asked === null || asked === "" || D.rankings.includes(asked)) {
    return { ranking: asked || D.default_ranking, note: null };
  }
  return { ranking: D.default_ranking, note: el("p", { class: "notice", id: "ranking-notice" },
    `This version has no ranking "${visible(asked)}"; showing ${D.default_ranking}, its default.`) };
}

function link(view, params) {
  const query = new URLSearchParams(
    Object.entries(params).filter(([, v]) => v !== "" && v !== null && v !== undefined && v !== 0),
  ).toString();
  return `#${view}${query ? `?${query}` : ""}`;
}

// --- marks: kept in the browser's storage, downloaded as a cleaning list ----------------------

function loadMarks() {
  try {
    return new Map(JSON.parse(localStorage.getItem(MARKS_KEY) || "[]"));
  } catch {
    return new Map();
  }
}

function saveMarks() {
  try {
    localStorage.setItem(MARKS_KEY, JSON.stringify([...marks]));
  } catch {
    // storage blocked (a private window): marks last until the page is closed
  }
  document.getElementById("mark-count").textContent = marks.size;
}

function setMark(idx, mark) {
  if (marks.get(idx) === mark) marks.delete(idx);
  else marks.set(idx, mark);
  saveMarks();
}

function csvField(text) {
  return /[",\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
}

// The file `clean: {from: <version>, list: marks.csv}` reads: idx, path, label, mark.
function marksCsv() {
  const lines = ["idx,path,label,mark"];
  for (const idx of [...marks.keys()].sort((a, b) => a - b)) {
    const row = trainAt.get(idx);
    const label = row === undefined ? D.images.label[imageAt.get(idx)] : D.train.label[row];
    lines.push([idx, csvField(pathOf(idx)), csvField(className(label)), marks.get(idx)].join(","));
  }
  return `${lines.join("\n")}\n`;
}

function downloadMarks() {
  const blob = new Blob([marksCsv()], { type: "text/csv" });
  const anchor = el("a", { href: URL.createObjectURL(blob), download: "marks.csv" });
  document.body.append(anchor);
  anchor.click();
  anchor.remove();
}

function markButtons(idx, rerender) {
  const button = (mark, text) =>
    el("button", {
      type: "button", "data-mark": mark, "aria-pressed": String(marks.get(idx) === mark),
      onclick: () => { setMark(idx, mark); rerender(); },
    }, text);
  return el("span", { class: "mark-buttons" }, button("mislabeled", "mislabeled"), " ",
    button("fine", "fine"));
}

// --- the test images: a filtered, sorted grid ---------------------------------------------------

function gridFilters(params) {
  return {
    true: params.get("true") ?? "", pred: params.get("pred") ?? "",
    outcome: params.get("outcome") ?? "all", sort: params.get("sort") ?? "confidence-desc",
    q: params.get("q") ?? "", page: Number(params.get("page") ?? 0),
  };
}

function testList(f) {
  const t = D.test;
  const query = f.q.trim().toLowerCase();
  const rows = [];
  for (let i = 0; i < t.idx.length; i++) {
    if (f.true !== "" && t.label[i] !== Number(f.true)) continue;
    if (f.pred !== "" && t.pred[i] !== Number(f.pred)) continue;
    const wrong = t.label[i] !== t.pred[i];
    if ((f.outcome === "wrong" && !wrong) || (f.outcome === "right" && wrong)) continue;
    if (query && String(t.idx[i]) !== query && !pathOf(t.idx[i]).toLowerCase().includes(query)
      && !shownPath(t.idx[i]).toLowerCase().includes(query)) {
      continue;
    }
    rows.push(i);
  }
  const sorters = {
    "confidence-desc": (a, b) => t.confidence[b] - t.confidence[a] || t.idx[a] - t.idx[b],
    "confidence-asc": (a, b) => t.confidence[a] - t.confidence[b] || t.idx[a] - t.idx[b],
    idx: (a, b) => t.idx[a] - t.idx[b],
  };
  return rows.sort(sorters[f.sort] || sorters.idx).map((i) => t.idx[i]);
}

function classSelect(name, value, label) {
  return el("label", {}, `${label} `,
    el("select", { name, "data-filter": name },
      el("option", { value: "" }, "any"),
      D.classes.map((c, i) => el("option", { value: String(i), selected: value === String(i) }, c))));
}

function renderGrid(params) {
  const f = gridFilters(params);
  const list = testList(f);
  const pages = Math.max(1, Math.ceil(list.length / GRID_PAGE));
  const page = Math.min(f.page, pages - 1);
  const update = (change) => { location.hash = link("test", { ...f, page: 0, ...change }); };
  const controls = el("form", { class: "controls", onsubmit: (e) => e.preventDefault(),
    onchange: (e) => update({ [e.target.name]: e.target.value }) },
    classSelect("true", f.true, "true class"),
    classSelect("pred", f.pred, "predicted"),
    el("label", {}, "outcome ", el("select", { name: "outcome", "data-filter": "outcome" },
      ["all", "wrong", "right"].map((v) => el("option", { value: v, selected: f.outcome === v },
        { all: "all", wrong: "mispredicted", right: "correct" }[v])))),
    el("label", {}, "sort ", el("select", { name: "sort", "data-filter": "sort" },
      [["confidence-desc", "most confident first"], ["confidence-asc", "least confident first"],
        ["idx", "by index"]].map(([v, text]) => el("option", { value: v, selected: f.sort === v }, text)))),
    el("label", {}, "search ", el("input", { type: "search", name: "q", id: "search", value: f.q,
      placeholder: "file name or index", "data-filter": "q" })),
    el("span", { class: "count", id: "grid-count" },
      `${list.length.toLocaleString()} of ${D.test.idx.length.toLocaleString()} test images`));
  const shown = list.slice(page * GRID_PAGE, (page + 1) * GRID_PAGE);
  const grid = el("div", { class: "grid", id: "test-grid" }, shown.map((idx) => {
    const i = testAt.get(idx);
    const wrong = D.test.label[i] !== D.test.pred[i];
    return el("a", { class: `card${wrong ? " wrong" : ""}`, href: `#test/${idx}`, "data-idx": idx,
      "data-wrong": String(wrong) }, thumb(idx),
      el("div", { class: "cap", title: shownPath(idx) }, `#${idx} ${className(D.test.label[i])}`),
      el("div", { class: `cap ${wrong ? "no" : "ok"}` },
        `→ ${className(D.test.pred[i])} ${formatConfidence(D.test.confidence[i])}`));
  }));
  current = { kind: "grid", list };
  return [controls, grid, pager(page, pages, (p) => link("test", { ...f, page: p }))];
}

function pager(page, pages, href) {
  if (pages <= 1) return null;
  return el("div", { class: "pager" },
    page > 0 ? el("a", { href: href(page - 1), rel: "prev" }, "← previous") : null,
    `page ${page + 1} of ${pages}`,
    page < pages - 1 ? el("a", { href: href(page + 1), rel: "next" }, "next →") : null);
}

// --- one test image ------------------------------------------------------------------------------

function influencerCard(trainIdx, influence, rank, scale, testRow) {
  const row = trainAt.get(trainIdx);
  const label = row === undefined ? null : D.train.label[row];
  const pred = row === undefined ? null : D.train.pred[row];
  const testWrong = D.test.label[testRow] !== D.test.pred[testRow];
  const sameError = testWrong && pred !== null && pred === D.test.pred[testRow] && pred !== label;
  return el("a", { class: "influencer", href: `#train/${trainIdx}`, "data-train-idx": trainIdx,
    "data-influence": String(influence), "data-rank": rank },
    thumb(trainIdx, "small"),
    el("div", {},
      el("div", {}, `${rank}. `, el("b", { class: "score" }, formatInfluence(influence)),
        sameError ? el("span", { class: "same-error", title:
          "this training image is itself predicted as the same wrong class" }, " same error") : null),
      el("div", { class: "cap" }, `label ${label === null ? "–" : className(label)}, ` +
        `predicted ${pred === null ? "–" : className(pred)} `,
        D.planted && row !== undefined && D.train.flipped[row]
          ? el("span", { class: "badge flipped" }, "flipped") : null),
      el("div", { class: "cap hint", title: shownPath(trainIdx) }, fileName(trainIdx)),
      el("div", { class: "bar", style: `width: ${Math.max(2, (100 * Math.abs(influence)) / scale)}%` })));
}

function compareTable(row) {
  const names = Object.keys(D.versions);
  if (names.length < 2) return null;
  return [el("h2", {}, "Across versions"),
    el("table", { class: "versions", id: "across-versions" },
      el("tr", {}, el("th", {}, "version"), el("th", {}, "prediction"), el("th", {}, "confidence"),
        el("th", {}, "top proponents in that version")),
      names.map((name) => {
        const v = D.versions[name];
        return el("tr", { "data-version": name },
          el("td", {}, name === D.version ? el("b", {}, name) : name),
          el("td", { class: v.pred[row] === D.test.label[row] ? "ok" : "no" }, className(v.pred[row])),
          el("td", {}, formatConfidence(v.confidence[row])),
          el("td", {}, el("div", { class: "strip" }, v.proponents[row].map(([idx, value]) =>
            el("a", { href: `#train/${idx}`, title: shownPath(idx) }, thumb(idx, "small"),
              formatInfluence(value))))));
      }))];
}

function renderTest(idx, params) {
  const row = testAt.get(idx);
  if (row === undefined) return [el("p", {}, `No test image ${idx} in this version.`)];
  const t = D.test;
  const wrong = t.label[row] !== t.pred[row];
  const list = testList(gridFilters(params));
  const proponents = t.proponents[row];
  const opponents = t.opponents[row];
  const scale = Math.max(1e-300, ...[...proponents, ...opponents].map(([, v]) => Math.abs(v)));
  const at = list.indexOf(idx);
  current = { kind: "test", idx, list, back: link("test", gridFilters(params)) };
  const around = (step) => (at >= 0 && list[at + step] !== undefined
    ? `#test/${list[at + step]}${hashQuery()}`
    : null);
  const section = (title, entries, kind) => el("div", { class: kind, id: kind },
    el("h2", {}, `${title} (${entries.length})`),
    entries.length ? entries.map(([trainIdx, value], i) =>
      influencerCard(trainIdx, value, i + 1, scale, row)) : el("p", { class: "hint" }, "none"));
  return [
    el("p", {}, el("a", { href: current.back }, "← test images"),
      around(-1) ? [" · ", el("a", { href: around(-1) }, "previous")] : null,
      around(1) ? [" · ", el("a", { href: around(1) }, "next")] : null),
    el("div", { class: "detail", id: "test-detail", "data-idx": idx },
      el("div", { class: "hero" }, thumb(idx)),
      el("div", {},
        el("h2", {}, `Test image #${idx}`),
        el("table", { class: "facts" },
          fact("file", shownPath(idx), { id: "test-file" }),
          fact("label", className(t.label[row]), { id: "test-label" }),
          fact("prediction", `${className(t.pred[row])} (${wrong ? "mispredicted" : "correct"})`,
            { id: "test-pred", class: wrong ? "no" : "ok" }),
          fact("confidence", formatConfidence(t.confidence[row]))),
        el("p", { class: "hint", id: "method-hint" }, `The training images with the largest ` +
          `influence on this image's loss (${D.method_label}): proponents lowered it (they pushed ` +
          `toward its label), opponents raised it. Top ${D.top} of each.`))),
    el("div", { class: "columns" }, section("Proponents", proponents, "proponents"),
      section("Opponents", opponents, "opponents")),
    compareTable(row),
  ];
}

// --- one training image ------------------------------------------------------------------------

function suspectOrder(ranking) {
  const ranks = D.train.ranks[ranking];
  return D.train.idx.map((idx, i) => [ranks[i], idx]).filter(([r]) => r !== null)
    .sort((a, b) => a[0] - b[0]).map(([, idx]) => idx);
}

function testStrip(entries) {
  if (!entries.length) return el("p", { class: "hint" }, "none among the test images' top lists");
  return el("div", { class: "grid" }, entries.map(([testIdx, value]) => {
    const i = testAt.get(testIdx);
    return el("a", { class: "card", href: `#test/${testIdx}`, "data-test-idx": testIdx,
      "data-influence": String(value) }, thumb(testIdx),
      el("div", { class: "cap" }, formatInfluence(value)),
      el("div", { class: "cap" }, `${className(D.test.label[i])} → ${className(D.test.pred[i])}`));
  }));
}

function flipFact(row) {
  if (!D.planted) return null;
  const flipped = D.train.flipped[row];
  return fact("planted noise", flipped
    ? el("span", { class: "badge flipped" }, `flipped from ${className(D.train.original[row])}`)
    : "label not flipped", { id: "train-flipped" });
}

function renderTrain(idx, params) {
  const row = trainAt.get(idx);
  if (row === undefined) {
    const at = imageAt.get(idx);
    return [el("p", {}, at === undefined ? `No image ${idx}.` : `Image #${idx} (${shownPath(idx)}, ` +
      `${className(D.images.label[at])}) is not in the training set of ${D.version}.`)];
  }
  const tr = D.train;
  const { ranking, note } = chosenRanking(params);
  const list = suspectOrder(ranking);
  current = { kind: "train", idx, list, ranking, back: link("suspects", { ranking }) };
  const rerender = () => render();
  const total = list.length;
  return [
    note,
    el("p", {}, el("a", { href: current.back }, "← suspects")),
    el("div", { class: "detail", id: "train-detail", "data-idx": idx },
      el("div", { class: "hero" }, thumb(idx)),
      el("div", {},
        el("h2", {}, `Training image #${idx}`),
        el("table", { class: "facts" },
          fact("file", shownPath(idx), { id: "train-file" }),
          fact("label", className(tr.label[row]), { id: "train-label" }),
          flipFact(row),
          fact("prediction", `${className(tr.pred[row])} (${formatConfidence(tr.confidence[row])})`,
            { class: tr.pred[row] === tr.label[row] ? "ok" : "no" }),
          fact("your mark", markButtons(idx, rerender))),
        el("table", { class: "facts rank-table", id: "rankings" },
          el("tr", {}, el("th", {}, "ranking"), el("th", {}, "suspicion"), el("th", {}, "rank")),
          D.rankings.map((name) => el("tr", { "data-ranking": name },
            el("td", { class: name === ranking ? "current" : null, title: D.ranking_meanings[name] },
              name + (name === D.default_ranking ? " (default)" : "")),
            el("td", {}, tr.scores[name][row] === null ? "–" : String(tr.scores[name][row])),
            el("td", {}, tr.ranks[name][row] === null ? "–" : `${tr.ranks[name][row]} of ${total}`)))))),
    el("h2", {}, "Test images it helps most"), testStrip(tr.helps[row]),
    el("h2", {}, "Test images it harms most"), testStrip(tr.harms[row]),
  ];
}

// --- the suspects ------------------------------------------------------------------------------

function renderSuspects(params) {
  const { ranking, note } = chosenRanking(params);
  const page = Number(params.get("page") || 0);
  const list = suspectOrder(ranking);
  const pages = Math.max(1, Math.ceil(list.length / SUSPECT_PAGE));
  const shown = list.slice(page * SUSPECT_PAGE, (page + 1) * SUSPECT_PAGE);
  current = { kind: "suspects", list };
  const tr = D.train;
  return [
    note,
    el("div", { class: "controls" },
      el("label", {}, "ranking ", el("select", { id: "ranking", onchange: (e) => {
        location.hash = link("suspects", { ranking: e.target.value });
      } }, D.rankings.map((r) => el("option", { value: r, selected: r === ranking, title: D.ranking_meanings[r] },
        r + (r === D.default_ranking ? " (default)" : ""))))),
      el("span", { class: "hint" }, D.ranking_meanings[ranking]),
      el("button", { type: "button", id: "download-marks", onclick: downloadMarks },
        `download marks (${marks.size})`)),
    el("div", { class: "grid wide", id: "suspect-grid" }, shown.map((idx) => {
      const row = trainAt.get(idx);
      const mark = marks.get(idx);
      const card = el("div", { class: "card", "data-idx": idx },
        el("a", { href: `#train/${idx}${link("", { ranking }).slice(1)}` }, thumb(idx)),
        el("div", { class: "cap" }, `${tr.ranks[ranking][row]}. ${className(tr.label[row])}`),
        el("div", { class: "cap hint" }, `predicted ${className(tr.pred[row])}`),
        el("div", { class: "cap hint" }, `${ranking} ${tr.scores[ranking][row]}`),
        D.planted && tr.flipped[row] ? el("span", { class: "badge flipped" }, "flipped") : null,
        mark ? el("span", { class: `badge ${mark === "fine" ? "fine" : "marked"}` }, mark) : null,
        el("div", {}, markButtons(idx, () => render())));
      return card;
    })),
    pager(page, pages, (p) => link("suspects", { ranking, page: p })),
  ];
}

function renderMarks() {
  const rows = [...marks.entries()].sort((a, b) => a[0] - b[0]);
  current = { kind: "marks", list: rows.map(([idx]) => idx) };
  return [
    el("h2", {}, `Your marks (${rows.length})`),
    el("p", { class: "hint" }, "Download them and name the file in a cleaned version: ",
      el("code", {}, `clean: {from: ${D.version}, list: marks.csv, action: drop}`),
      " (relabel instead of drop sets each to this version's prediction). Images marked fine are kept."),
    el("p", { class: "marks" },
      el("button", { type: "button", id: "download-marks", onclick: downloadMarks }, "download marks.csv"), " ",
      el("button", { type: "button", id: "clear-marks", onclick: () => { marks.clear(); saveMarks(); render(); } },
        "clear all")),
    el("div", { class: "grid" }, rows.map(([idx, mark]) => el("a", { class: "card", href: `#train/${idx}` },
      thumb(idx), el("div", { class: "cap" }, `#${idx} ${mark}`)))),
  ];
}

function renderKeys() {
  const keys = [["←  →  or  k  j", "previous / next image (or card in a grid)"],
    ["Esc  or  u", "back to the list"], ["m  /  f", "mark a training image mislabeled / fine"],
    ["/", "search the test images"], ["?", "this list"]];
  return [el("h2", {}, "Keys"), el("table", { class: "facts" },
    keys.map(([k, what]) => fact(el("kbd", {}, k), what)))];
}

// --- routing and keys -------------------------------------------------------------------------

function render() {
  const { view, id, params } = parseHash();
  const views = {
    test: () => (id === null ? renderGrid(params) : renderTest(id, params)),
    train: () => renderTrain(id, params),
    suspects: () => renderSuspects(params),
    marks: renderMarks,
    keys: renderKeys,
  };
  const main = document.getElementById("main");
  main.replaceChildren(...(views[view] || views.test)().flat().filter(Boolean));
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === (views[view] ? view : "test"));
  }
  document.title = `${D.version} · tracinflow explorer`;
  document.body.dataset.view = view;
}

function step(direction) {
  if (!current) return;
  if (current.kind === "test" || current.kind === "train") {
    const next = current.list[current.list.indexOf(current.idx) + direction];
    if (next === undefined) return;
    location.hash = `#${current.kind}/${next}${hashQuery()}`;
    return;
  }
  const cards = [...document.querySelectorAll("#main .grid > a.card, #main .grid > .card > a")];
  const at = cards.indexOf(document.activeElement);
  const target = cards[Math.min(cards.length - 1, Math.max(0, at + direction))];
  if (target) target.focus();
}

function onKey(event) {
  if (event.target.matches("input, select, textarea") || event.ctrlKey || event.metaKey || event.altKey) {
    if (event.key === "Escape") event.target.blur();
    return;
  }
  const actions = {
    ArrowRight: () => step(1), j: () => step(1), ArrowLeft: () => step(-1), k: () => step(-1),
    Escape: () => current && current.back && (location.hash = current.back),
    u: () => current && current.back && (location.hash = current.back),
    m: () => current && current.kind === "train" && (setMark(current.idx, "mislabeled"), render()),
    f: () => current && current.kind === "train" && (setMark(current.idx, "fine"), render()),
    "/": () => {
      if (!document.getElementById("search")) location.hash = "#test";
      setTimeout(() => document.getElementById("search")?.focus(), 0);
    },
    "?": () => { location.hash = "#keys"; },
  };
  if (actions[event.key]) {
    event.preventDefault();
    actions[event.key]();
  }
}

document.getElementById("version").textContent = D.version;
saveMarks();
window.addEventListener("hashchange", () => { render(); window.scrollTo(0, 0); });
document.addEventListener("keydown", onKey);
render();
document.body.dataset.ready = "1";
