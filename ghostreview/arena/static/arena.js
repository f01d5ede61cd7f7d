// The arena page: fetch a pair, show it, send the vote, show the pair the answer carries. The prompt is set with
// textContent (never innerHTML): markup in a prompt is shown as text.
"use strict";
let current = null;
let busy = false;
let votes = 0;

function show(pair) {
  current = pair;
  document.getElementById("prompt").textContent = pair.prompt;
  document.getElementById("left").src = pair.left;
  document.getElementById("right").src = pair.right;
  document.body.dataset.pair = pair.pair;
  busy = false;
}

function status(text) {
  document.getElementById("status").textContent = text;
}

async function load() {
  const r = await fetch("/api/pair", {credentials: "same-origin"});
  if (!r.ok) { status("Could not load a pair (" + r.status + "): reload the page."); return; }
  show(await r.json());
  status("Votes so far: " + votes);
}

async function vote(choice) {
  if (!current || busy) return;
  busy = true;
  const r = await fetch("/api/vote", {
    method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({pair: current.pair, choice: choice}),
  });
  if (!r.ok) {
    const why = await r.json().catch(() => ({detail: r.statusText}));
    status("Vote not stored (" + r.status + "): " + why.detail);
    busy = false;
    if (r.status === 409) load();
    return;
  }
  const answer = await r.json();
  votes += 1;
  document.body.dataset.votes = String(votes);
  show(answer.next);
  status("Votes so far: " + votes);
}

const KEYS = {ArrowLeft: "left", "1": "left", ArrowDown: "tie", "2": "tie", ArrowUp: "both_bad", "3": "both_bad",
              ArrowRight: "right", "4": "right"};

document.addEventListener("keydown", (e) => {
  const choice = KEYS[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
});

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button[data-choice]")) {
    b.addEventListener("click", () => vote(b.dataset.choice));
  }
  load();
});
