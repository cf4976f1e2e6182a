const [n, ...xs] = require("fs").readFileSync(0, "utf8").split(/\s+/).filter(Boolean).map(Number);
console.log(xs.slice(0, n).reduce((a, b) => a + b, 0));
