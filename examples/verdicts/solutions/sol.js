const { Worker, isMainThread, parentPort } = require("worker_threads");

if (!isMainThread) {
  parentPort.postMessage(21);
} else {
  const mode = require("fs").readFileSync(0, "utf8").trim();
  if (mode === "ok") console.log(42);
  else if (mode === "wa") console.log(41);
  else if (mode === "tle") { let n = 0; for (;;) n++; }
  else if (mode === "mle") { const kept = []; for (;;) kept.push(new Array(1 << 17).fill(1.5)); }
  else if (mode === "re") throw new Error("crash");
  else if (mode === "threads") {
    const halves = [];
    for (let i = 0; i < 2; i++) {
      new Worker(__filename).on("message", (h) => {
        halves.push(h);
        if (halves.length === 2) console.log(halves[0] + halves[1]);
      });
    }
  }
}
