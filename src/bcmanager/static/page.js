"use strict";
// The runs' page: asks /status every two seconds and redraws in place, without a reload or a
// build step. Every text goes in through textContent, never as HTML. The address says what is
// shown: every run together, or with #run=PATH one run's own picture (/status?run=PATH), so a
// reload or a bookmark keeps the view and Back returns to all runs.

const POLL_MS = 2000;
const STATES = ["done", "failed", "leased", "pending", "waiting"];
const PHASES = {
  "sequencing": ["Sequencing", "sequencing"],
  "finished, basecalling": ["Finished, basecalling", "basecalling"],
  "complete": ["Complete", "complete"],
};
const SVG = "http://www.w3.org/2000/svg";

let span = "last_hour";
let latest = null;

const $ = (id) => document.getElementById(id);

function count(n) {
  return Math.round(n).toLocaleString("en-US");
}

function files(n) {
  return `${count(n)} ${n === 1 ? "file" : "files"}`;
}

function perMinute(n) {
  if (n >= 10) return n.toFixed(0);
  if (n >= 1) return n.toFixed(1);
  return n === 0 ? "0" : n.toFixed(2);
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(n >= 100 ? 0 : 1)} ${units[i]}`;
}

// A number of bases, shortened as the run's report writes it: 950 b, 12.3 kb, 4.56 Gb.
function bases(n) {
  for (const [unit, size] of [["Tb", 1e12], ["Gb", 1e9], ["Mb", 1e6], ["kb", 1e3]]) {
    if (n >= size) return `${Number((n / size).toPrecision(3))} ${unit}`;
  }
  return `${n} b`;
}

function share(fraction) {
  return fraction === null ? "–" : `${(100 * fraction).toFixed(1)}%`;
}

function meanQ(q) {
  return q === null ? "–" : q.toFixed(1);
}

function duration(seconds) {
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${String(minutes % 60).padStart(2, "0")} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

function ago(seconds) {
  return seconds === null ? "before restart" : `${duration(seconds)} ago`;
}

function shortId(jobid) {
  return jobid.length > 10 ? `…${jobid.slice(-8)}` : jobid;
}

function cell(row, text, className = "", title = "") {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  if (title) td.title = title;
  return td;
}

// A phase's words and colour; complete with quarantined files is amber, not green: files were
// set aside and need an operator (`bcmanager retry`).
function phaseLabel(phase, quarantined) {
  if (phase === "complete" && quarantined > 0) {
    return [`Complete, ${quarantined} quarantined`, "partial"];
  }
  return PHASES[phase] || [phase, ""];
}

function renderHeader(s) {
  $("run-dir").textContent = s.input_dir;
  const [label, tone] = phaseLabel(s.phase, s.files.failed);
  const phase = $("phase");
  phase.textContent = s.ready ? label : "Scanning…";
  phase.className = `badge ${tone}`;
  phase.dataset.phase = s.phase;
  const pace = $("pace");
  pace.hidden = !s.ready || s.phase === "complete";
  pace.textContent = s.drain.keeping_up ? "Keeping up" : "Falling behind";
  pace.className = `badge ${s.drain.keeping_up ? "good" : "behind"}`;
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function renderOverall(s) {
  const total = STATES.reduce((sum, state) => sum + s.files[state], 0);
  const totalBytes = STATES.reduce((sum, state) => sum + s.bytes[state], 0);
  const bar = $("bar");
  for (const state of STATES) {
    const share = total ? (100 * s.files[state]) / total : 0;
    bar.querySelector(`.${state}`).style.width = `${share}%`;
    $(`count-${state}`).textContent = count(s.files[state]);
    $(`bytes-${state}`).textContent = bytes(s.bytes[state]);
  }
  if (!total) {
    $("percent").textContent = "–";
    $("summary").textContent = "No raw file yet";
    return;
  }
  const done = s.files.done;
  $("percent").textContent = `${Math.floor((1000 * done) / total) / 10}%`;
  $("summary").textContent =
    `${count(done)} of ${files(total)} basecalled · ` +
    `${bytes(s.bytes.done)} of ${bytes(totalBytes)}`;
}

function renderRates(s) {
  const short = s.rates.last_5_minutes;
  const hour = s.rates.last_60_minutes;
  for (const flow of ["arrived", "basecalled"]) {
    $(`${flow}-5`).textContent = perMinute(short[flow].files_per_minute);
    $(`${flow}-detail`).textContent =
      `${bytes(short[flow].bytes_per_minute)}/min · ` +
      `${perMinute(hour[flow].files_per_minute)} files/min over the hour`;
  }
  const drain = s.drain;
  const finished = s.phase !== "sequencing";
  $("eta-label").textContent = finished ? "Basecalling done in" : "Backlog basecalled in";
  if (s.phase === "complete") {
    $("eta").textContent = "Complete";
  } else if (drain.eta_seconds === null) {
    $("eta").textContent = "–";
  } else {
    $("eta").textContent = drain.eta_seconds === 0 ? "now" : duration(drain.eta_seconds);
  }
  let detail = `${files(drain.backlog_files)} (${bytes(drain.backlog_bytes)}) to go`;
  if (drain.eta_seconds === null && drain.backlog_files) detail += ", none basecalled lately";
  if (!drain.keeping_up && drain.growth_files_per_minute > 0) {
    detail += `; growing by ${perMinute(drain.growth_files_per_minute)}/min`;
  }
  $("eta-detail").textContent = detail;
}

function niceCeiling(value) {
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

function tick(value) {
  return String(Number(value.toFixed(2)));
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

// Files per minute in each bucket; the current bucket is still filling, so it is measured over
// the time it has covered (at least a minute, as the server measures its rates).
function perMinuteSeries(series, counts) {
  const scale = 60 / series.bucket_seconds;
  const values = counts.map((v) => v * scale);
  const covered = Math.max(series.current_bucket_seconds, 60);
  values[values.length - 1] = (counts[counts.length - 1] * 60) / covered;
  return values;
}

function renderChart(series) {
  const svg = $("chart");
  const width = svg.clientWidth || 900;
  const height = svg.clientHeight || 240;
  const [left, right, top, bottom] = [48, 14, 10, 24];
  const arrived = perMinuteSeries(series, series.arrived);
  const basecalled = perMinuteSeries(series, series.basecalled);
  const ceiling = niceCeiling(Math.max(1, ...arrived, ...basecalled));
  const last = arrived.length - 1;
  const x = (i) => left + ((width - left - right) * i) / last;
  const y = (v) => top + (height - top - bottom) * (1 - v / ceiling);
  const parts = [];
  for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
    const value = ceiling * fraction;
    parts.push(svgElement("line", {
      class: "grid", x1: left, x2: width - right, y1: y(value), y2: y(value),
    }));
    parts.push(svgElement("text", { x: left - 8, y: y(value) + 4, "text-anchor": "end" },
      tick(value)));
  }
  // Time ticks every 15 minutes or every 12 hours, counted back from now.
  const hours = series.bucket_seconds >= 1800;
  const step = (hours ? 12 * 3600 : 15 * 60) / series.bucket_seconds;
  for (let back = 0; back <= last; back += step) {
    const label = back === 0 ? "now"
      : hours ? `−${(back * series.bucket_seconds) / 3600} h`
        : `−${(back * series.bucket_seconds) / 60} min`;
    parts.push(svgElement("text", {
      x: x(last - back), y: height - 6, "text-anchor": back === 0 ? "end" : "middle",
    }, label));
  }
  const line = (values) =>
    values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
  const floor = y(0).toFixed(1);
  parts.push(svgElement("path", {
    class: "area", d: `${line(basecalled)}L${x(last)},${floor}L${x(0)},${floor}Z`,
  }));
  parts.push(svgElement("path", { class: "arrived", d: line(arrived) }));
  parts.push(svgElement("path", { class: "basecalled", d: line(basecalled) }));
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren(...parts);
}

// The work columns, the same for an engine's row and the retired engines' sum.
function tallyCells(row, work) {
  cell(row, count(work.jobs_done), "num");
  cell(row, count(work.files_done), "num");
  const mean = work.mean_seconds_per_file;
  cell(row, mean === null ? "–" : mean.toFixed(1), "num");
  cell(row, count(work.jobs_failed), work.jobs_failed ? "num bad" : "num");
  cell(row, count(work.jobs_expired), work.jobs_expired ? "num warn" : "num");
  cell(row, count(work.jobs_released), "num");
}

function renderEngines(s) {
  const body = $("engines").tBodies[0];
  body.replaceChildren();
  for (const engine of s.engines) {
    const row = body.insertRow();
    cell(row, engine.engine);
    const jobs = engine.current_jobs;
    cell(row, jobs.length ? jobs.map(shortId).join(", ") : "idle", jobs.length ? "mono" : "dim",
      jobs.join(", "));
    tallyCells(row, engine);
    const silent = engine.seconds_since_contact;
    cell(row, ago(silent), jobs.length && silent > 60 ? "num warn" : "num");
  }
  const retired = s.retired_engines;
  const note = $("retired-note");
  note.hidden = retired.engines === 0;
  if (retired.engines) {
    // One row sums the engines no longer listed, so the columns add up to the run's totals.
    const row = body.insertRow();
    row.className = "retired";
    cell(row, `${count(retired.engines)} retired`, "dim");
    cell(row, "–", "dim");
    tallyCells(row, retired);
    cell(row, "–", "num dim");
    note.textContent = `Retired: engines idle for ${duration(retired.idle_seconds)}, or beyond ` +
      `the ${count(retired.idle_listed)} idle ones active last; their work is summed in one row.`;
  }
  $("no-engines").hidden = s.engines.length > 0 || retired.engines > 0;
}

// The run whose own picture is shown, as /runs names it; null: every run together.
function chosenRun() {
  const hash = window.location.hash;
  if (!hash.startsWith("#run=")) return null;
  try {
    return decodeURIComponent(hash.slice("#run=".length));
  } catch (error) {
    return null; // not an address this page made
  }
}

function showRun(path) {
  window.location.hash = path === null ? "" : `run=${encodeURIComponent(path)}`;
}

// One line per run. Under the whole picture each line opens that run's own; in a run's own
// picture the one line heads it, with the way back. A run served alone (INPUT_DIR itself) is
// the one line and opens nothing.
function renderRuns(s, chosen) {
  const card = $("runs-card");
  card.hidden = s.runs.length === 0;
  const pickable = chosen === null && s.runs.length > 1;
  $("runs-title").textContent = chosen !== null ? "Run" : `Runs (${count(s.runs.length)})`;
  $("all-runs").hidden = chosen === null;
  $("runs-hint").hidden = !pickable;
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const run of s.runs) {
    const row = body.insertRow();
    const where = row.insertCell();
    where.className = "path";
    where.title = `reads in ${run.output_dir}`;
    const name = run.path === "." ? "INPUT_DIR" : run.path;
    if (pickable) {
      const link = document.createElement("a");
      link.href = `#run=${encodeURIComponent(run.path)}`;
      link.textContent = name;
      where.append(link);
      row.className = "pick";
      row.addEventListener("click", () => showRun(run.path));
    } else {
      where.textContent = name;
    }
    const [label, tone] = phaseLabel(run.phase, run.files.failed);
    const badge = document.createElement("span");
    badge.className = `badge small ${tone}`;
    badge.textContent = label;
    row.insertCell().append(badge);
    cell(row, String(run.priority), "num");
    cell(row, run.paused ? "paused" : "", run.paused ? "warn" : "");
    cell(row, count(run.files.pending), "num");
    cell(row, count(run.files.leased), "num");
    cell(row, count(run.files.done), "num");
    cell(row, count(run.files.failed), run.files.failed ? "num bad" : "num");
    cell(row, run.lag_seconds === null ? "–" : duration(run.lag_seconds), "num");
    cell(row, perMinute(run.basecalled.files_per_minute), "num");
    const eta = run.phase === "complete" ? "done"
      : run.eta_seconds === null ? "–" : duration(run.eta_seconds);
    cell(row, eta, "num");
    const reads = run.reads;
    cell(row, reads ? count(reads.reads) : "–", "num");
    cell(row, reads ? bases(reads.bases) : "–", "num");
    cell(row, reads && reads.n50 !== null ? count(reads.n50) : "–", "num");
    cell(row, reads ? meanQ(reads.mean_q) : "–", "num");
    cell(row, reads ? share(reads.pass_fraction) : "–", "num");
    // Reads from two models are not one data set: said in the model's cell, in red.
    if (reads && reads.mixed_models) {
      cell(row, `${reads.models.length} models`, "bad", reads.models.join(", "));
    } else {
      cell(row, run.model || "–", run.model ? "" : "dim");
    }
  }
}

// Vertical bars over the chart's width, the highest reaching the top, a label under every few
// bars and the highest value at the top left; ``mark`` ({at, label}, ``at`` in bars from the
// left) draws a line across, as the N50 on the length chart.
function drawBars(svg, values, labels, topLabel, mark = null) {
  const width = svg.clientWidth || 400;
  const height = svg.clientHeight || 180;
  const [left, right, top, bottom] = [64, 8, 10, 22];
  const highest = Math.max(0, ...values);
  const parts = [];
  if (highest <= 0) {
    parts.push(svgElement("text", { x: width / 2, y: height / 2, "text-anchor": "middle" },
      "no reads yet"));
  } else {
    const plot = height - top - bottom;
    // Bars at most 48 px wide: a young run's one hour is not a wall.
    const step = Math.min((width - left - right) / values.length, 48);
    const every = Math.ceil(values.length / Math.max(1, Math.floor((width - left - right) / 64)));
    values.forEach((value, i) => {
      const tall = (plot * value) / highest;
      const x = left + i * step;
      const bar = svgElement("rect", {
        class: "bin", x: x.toFixed(1), y: (top + plot - tall).toFixed(1),
        width: Math.max(step - 1, 0.5).toFixed(1), height: tall.toFixed(1),
      });
      bar.append(svgElement("title", {}, `${labels[i]}: ${count(value)}`));
      parts.push(bar);
      if (i % every === 0) {
        parts.push(svgElement("text", { x: x + step / 2, y: height - 6, "text-anchor": "middle" },
          labels[i]));
      }
    });
    parts.push(svgElement("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, topLabel));
    parts.push(svgElement("text", { x: left - 6, y: top + plot, "text-anchor": "end" }, "0"));
    if (mark !== null) {
      const x = (left + Math.min(mark.at, values.length) * step).toFixed(1);
      parts.push(svgElement("line", { class: "mark", x1: x, x2: x, y1: top, y2: top + plot }));
      parts.push(svgElement("text", { class: "mark", x: Number(x) + 4, y: top + 10 },
        mark.label));
    }
  }
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren(...parts);
}

// A histogram's bins from 0, with the long tail (``beyond``) as one last bar.
function drawHistogram(svg, histogram, label, mark = null) {
  const values = [...histogram.counts];
  const labels = values.map((_, i) => label(i * histogram.bin_width));
  if (histogram.beyond) {
    values.push(histogram.beyond);
    labels.push(`≥${label(histogram.counts.length * histogram.bin_width)}`);
  }
  drawBars(svg, values, labels, count(Math.max(0, ...values)), mark);
}

// Bases per hour, from the bases of the jobs that ended in each bucket.
function drawYield(svg, series) {
  const perHour = series.bases.map((b) => (b * 3600) / series.bucket_seconds);
  const labels = perHour.map((_, i) => new Date((series.start + i * series.bucket_seconds) * 1000)
    .toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  drawBars(svg, perHour, labels, `${bases(Math.max(0, ...perHour))}/h`);
}

// What one run's reads came to: shown when one run is in view (a run's own picture, or
// INPUT_DIR served as one run) and its yield is known.
function renderReads(s) {
  const run = s.runs.length === 1 ? s.runs[0] : null;
  const card = $("reads-card");
  card.hidden = run === null || !run.reads;
  if (card.hidden) return;
  const r = run.reads;
  $("reads-jobs").textContent = `from ${count(r.jobs)} ${r.jobs === 1 ? "job" : "jobs"}`;
  $("reads-count").textContent = count(r.reads);
  $("reads-split").textContent = `${count(r.pass_reads)} pass · ${count(r.fail_reads)} fail`;
  $("reads-bases").textContent = bases(r.bases);
  $("bases-split").textContent = `${bases(r.pass_bases)} pass · ${bases(r.fail_bases)} fail`;
  $("reads-n50").textContent = r.n50 === null ? "–" : count(r.n50);
  $("n50-detail").textContent = `bases, to within ${count(r.n50_resolution)}`;
  $("reads-q").textContent = meanQ(r.mean_q);
  $("reads-pass").textContent = share(r.pass_fraction);
  $("pass-detail").textContent = `of ${count(r.reads)} reads`;
  const a = r.account;
  $("reads-account").textContent = `${count(a.reads_in)} raw reads in · ` +
    `${count(a.records_out)} records out · ${count(a.split_reads)} split · ` +
    `${count(a.reads_missing)} missing · ${count(a.files_rejected)} files rejected`;
  const warnings = [];
  if (a.reads_missing) {
    warnings.push([`${count(a.reads_missing)} reads of done files did not come out ` +
      "(dropped on purpose, as BCM_MAY_DROP_READS allows)", ""]);
  }
  if (a.files_rejected) {
    warnings.push([`${count(a.files_rejected)} times a DONE's reads did not all come out and ` +
      `its files went to the failure policy; last: ${a.rejections.join("; ")}`, ""]);
  }
  if (r.mixed_models) {
    warnings.push([`Basecalled with ${r.models.length} models (${r.models.join(", ")}): ` +
      "its reads are not all alike", "alert"]);
  }
  if (r.jobs_without_stats) {
    warnings.push([`${count(r.jobs_without_stats)} done jobs left no readable statistics: ` +
      "their reads are missing from every number here", ""]);
  }
  if (r.files_unreadable) {
    warnings.push([`${count(r.files_unreadable)} reads files could not be read by their agents`,
      ""]);
  }
  for (const line of r.problems) warnings.push([line, ""]);
  const list = $("reads-warnings");
  list.replaceChildren(...warnings.map(([line, className]) => {
    const item = document.createElement("li");
    item.textContent = line;
    item.className = className;
    return item;
  }));
  list.hidden = warnings.length === 0;
  const complete = run.phase === "complete";
  $("reads-report").hidden = !complete;
  $("report-path").textContent = complete ? `${run.output_dir}/report.html` : "";
  drawYield($("yield-chart"), r.yield_over_time);
  const n50 = r.n50 === null ? null
    : { at: r.n50 / r.length_histogram.bin_width, label: `N50 ${bases(r.n50)}` };
  drawHistogram($("length-chart"), r.length_histogram, bases, n50);
  drawHistogram($("q-chart"), r.q_histogram, String);
  renderBarcodes(r);
  const body = $("models").tBodies[0];
  body.replaceChildren();
  for (const use of r.basecallers) {
    const row = body.insertRow();
    cell(row, use.name || "unknown", use.name ? "" : "dim");
    cell(row, use.version || "–", use.version ? "" : "dim");
    cell(row, use.model || "unknown", r.mixed_models ? "bad" : use.model ? "" : "dim");
    cell(row, count(use.jobs), "num");
  }
}

function renderBarcodes(r) {
  const body = $("barcodes").tBodies[0];
  body.replaceChildren();
  const named = r.barcodes.some((b) => b.barcode !== null) || r.more_barcodes !== null;
  $("no-barcodes").hidden = named;
  if (!named) return;
  const rows = [...r.barcodes];
  if (r.more_barcodes !== null) rows.push({ ...r.more_barcodes, barcode: "(more barcodes)" });
  for (const b of rows) {
    const row = body.insertRow();
    cell(row, b.barcode === null ? "no barcode" : b.barcode, b.barcode === null ? "dim" : "");
    cell(row, count(b.reads), "num");
    cell(row, bases(b.bases), "num");
    cell(row, b.reads ? share(b.pass_reads / b.reads) : "–", "num");
    cell(row, meanQ(b.mean_q), "num");
    const bar = document.createElement("span");
    bar.className = "share";
    bar.style.width = `${r.reads ? (100 * b.reads) / r.reads : 0}%`;
    row.insertCell().append(bar);
  }
}

// How each bad end of a job is shown, and its colour; the reason is the cell's tooltip.
const OUTCOMES = {
  FAILED: ["failed, retried", "warn"],
  QUARANTINED: ["quarantined", "bad"],
  EXPIRED: ["lease expired", "warn"],
  EMPTY: ["no output", "warn"],
};

function renderProblems(s) {
  const body = $("problems").tBodies[0];
  body.replaceChildren();
  for (const job of s.recent_problems) {
    const row = body.insertRow();
    cell(row, shortId(job.jobid), "mono", job.jobid);
    cell(row, job.engine);
    const [word, style] = OUTCOMES[job.outcome] || [job.outcome, "warn"];
    cell(row, word, style, job.reason);
    cell(row, count(job.files), "num");
    cell(row, ago(job.seconds_ago), "num");
    const how = job.signal ? `killed by ${job.signal}`
      : job.exit_code !== null && job.exit_code !== undefined ? `exit ${job.exit_code}` : "";
    cell(row, [how, job.last_line].filter(Boolean).join(": "), "why", job.last_line || "");
  }
  $("no-problems").hidden = s.recent_problems.length > 0;
  renderLines($("held-back"), [
    ...s.benched.map((e) => `benched: ${e.engine}: ${e.reason}`),
    ...(s.quarantined.length ? [`quarantined (${s.files.failed}): `
      + s.quarantined.map((q) => q.file).join(", ") + " — `bcmanager retry` sends them back"] : []),
  ]);
  renderLines($("job-problems"), s.job_problems);
}

// A list of plain lines, hidden when there are none.
function renderLines(list, lines) {
  list.replaceChildren(...lines.map((line) => {
    const item = document.createElement("li");
    item.textContent = line;
    return item;
  }));
  list.hidden = lines.length === 0;
}

function render(s, chosen) {
  renderRuns(s, chosen);
  renderHeader(s);
  renderOverall(s);
  renderRates(s);
  renderChart(s.history[span]);
  renderReads(s);
  renderEngines(s);
  renderProblems(s);
}

let timer = null;
let asked = 0; // the last request's number: an answer for a view left meanwhile is dropped

async function poll() {
  clearTimeout(timer);
  const mine = ++asked;
  const chosen = chosenRun();
  try {
    const query = chosen === null ? "" : `?run=${encodeURIComponent(chosen)}`;
    const reply = await fetch(`status${query}`, { cache: "no-store" });
    if (mine !== asked) return;
    // The login cookie is gone or the read token changed: log in again.
    if (reply.status === 401) {
      window.location.href = "login";
      return;
    }
    // The run is no longer served (or never was): back to every run.
    if (reply.status === 404 && chosen !== null) {
      showRun(null);
      return;
    }
    if (!reply.ok) throw new Error(`status ${reply.status}`);
    const picture = await reply.json();
    if (mine !== asked) return;
    latest = picture;
    render(latest, chosen);
    $("offline").hidden = true;
  } catch (error) {
    if (mine === asked) $("offline").hidden = false;
  } finally {
    if (mine === asked) timer = setTimeout(poll, POLL_MS);
  }
}

for (const button of document.querySelectorAll("[data-span]")) {
  button.addEventListener("click", () => {
    span = button.dataset.span;
    for (const other of document.querySelectorAll("[data-span]")) {
      other.classList.toggle("on", other === button);
    }
    if (latest) renderChart(latest.history[span]);
  });
}
window.addEventListener("resize", () => {
  if (!latest) return;
  renderChart(latest.history[span]);
  renderReads(latest);
});
window.addEventListener("hashchange", poll);
$("all-runs").addEventListener("click", () => showRun(null));
poll();
