// The apps' shared client of the gateway protocol (docs/GATEWAY.md): hello with a token
// and the last sequence processed, cumulative acks, resume after a drop, sends with
// receipts. Each page calls startApp({kind, onDeliver, onStatus}).
"use strict";

function tokenFromPage(kind) {
  const hash = new URLSearchParams(location.hash.slice(1));
  return { token: hash.get("token"), address: hash.get("address") || `${kind}:1` };
}

async function demoToken(address) {
  const r = await fetch(`/token?address=${encodeURIComponent(address)}`);
  if (!r.ok) throw new Error(`no token for ${address}: ${await r.text()}`);
  return (await r.json()).token;
}

function startApp({ kind, onDeliver, onStatus, onReceipt }) {
  const page = tokenFromPage(kind);
  const seqKey = `last-seq:${page.address}`;
  let ws = null, delay = 250, nextId = 1, welcomed = false;
  const held = [];
  const state = {
    address: page.address,
    lastSeq: Number(localStorage.getItem(seqKey) || 0),
    send(to, kindName, data, opts = {}) {
      const id = `m${nextId++}`;
      const frame = JSON.stringify({ type: "send", id, to, kind: kindName, data, ...opts });
      // offline (or before the welcome): held, and sent in order once welcomed again
      if (welcomed && ws.readyState === WebSocket.OPEN) ws.send(frame);
      else held.push(frame);
      return id;
    },
  };

  function retry() {
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 5000);
  }

  async function connect() {
    onStatus("connecting");
    if (!page.token) {  // the demo's gateway issues tokens; kept for every reconnect
      page.token = await demoToken(page.address).catch((e) => {
        onStatus(`offline: no token (${e.message}), retrying`); return null;
      });
      if (!page.token) return retry();
    }
    const token = page.token;
    ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", token, last_seq: state.lastSeq }));
    ws.onmessage = (ev) => {
      const f = JSON.parse(ev.data);
      if (f.type === "welcome") {
        delay = 250; welcomed = true;
        while (held.length) ws.send(held.shift());
        onStatus(`online as ${f.address}`);
      }
      else if (f.type === "deliver") {
        onDeliver(f);
        if (f.seq) {  // processed: ack it (cumulative) and remember it for a resume
          state.lastSeq = Math.max(state.lastSeq, f.seq);
          localStorage.setItem(seqKey, String(state.lastSeq));
          ws.send(JSON.stringify({ type: "ack", seq: state.lastSeq }));
        }
      } else if (f.type === "receipt" && onReceipt) onReceipt(f);
    };
    ws.onclose = (ev) => {
      welcomed = false;
      onStatus(`offline (${ev.code}${ev.reason ? ": " + ev.reason : ""}), reconnecting`);
      if (ev.code === 4001 || ev.code === 4002) return;  // refused or replaced: stop
      retry();
    };
  }
  connect();
  return state;
}

function line(list, text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  list.prepend(li);
  return li;
}
