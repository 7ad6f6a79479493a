// The classic broadcast chat server on npm `ws`: every message to every client.
const { WebSocketServer } = require("ws");

const port = Number(process.env.PORT || 3401);
const wss = new WebSocketServer({ host: "127.0.0.1", port });
wss.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === 1) client.send(data, { binary: isBinary });
    }
  });
});
console.log(`node ws broadcast server on ${port}`);
