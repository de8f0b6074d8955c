// The browser chat: one WebSocket to /ws speaking JSON (docs/protocol.md,
// "The web front"). Chat text only ever enters the page as text
// (textContent), never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const log = $("log"), state = $("state");
  let socket = null, nextId = 1, pending = {};
  let nick = null, password = null, joined = false;
  let retryDelay = 1000, retryTimer = null, everConnected = false, lostAt = null;

  function line(cls, ...parts) {
    const item = document.createElement("li");
    if (cls) item.className = cls;
    for (const part of parts) {
      if (typeof part === "string") {
        item.append(part);
      } else {
        const span = document.createElement("span");
        span.className = part.cls;
        span.textContent = part.text;
        item.append(span);
      }
    }
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }
  const notice = (text) => line("notice", "* " + text);
  const who = (name) => ({ cls: "nick", text: name });

  function setState(text, offline) {
    state.textContent = text;
    state.classList.toggle("offline", !!offline);
  }

  function request(message, answered) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      notice("not connected: try again in a moment");
      return;
    }
    message.id = nextId++;
    if (answered) pending[message.id] = answered;
    socket.send(JSON.stringify(message));
  }

  function connect() {
    retryTimer = null;
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(scheme + "//" + location.host + "/ws");
    socket.onopen = () => {
      retryDelay = 1000;
      setState("connected");
      if (lostAt !== null) notice("reconnected");
      everConnected = true;
      if (nick !== null) join(true);
    };
    socket.onmessage = (event) => {
      let message;
      try { message = JSON.parse(event.data); } catch (e) { return; }
      if ((message.type === "ok" || message.type === "error") && message.id in pending) {
        const answered = pending[message.id];
        delete pending[message.id];
        answered(message);
      } else {
        show(message);
      }
    };
    socket.onclose = () => {
      socket = null;
      pending = {};
      const wasJoined = joined;
      joined = false;
      if (wasJoined || (everConnected && lostAt === null)) {
        notice("connection lost: reconnecting…");
      }
      lostAt = Date.now();
      setState("offline: reconnecting in " + Math.round(retryDelay / 1000) + " s", true);
      retryTimer = setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 10000);
    };
  }

  function join(again) {
    request({ type: "join", nick: nick, password: password || undefined }, (answer) => {
      if (answer.type === "ok") {
        joined = true;
        nick = answer.nick;
        $("join").hidden = true;
        $("talk").hidden = false;
        setState("connected as " + nick);
        notice((again ? "joined again as " : "you joined as ") + nick);
        $("say").focus();
      } else if (again && answer.error === "nick_taken") {
        // The server has not noticed yet that the old connection is gone.
        setTimeout(() => join(true), 2000);
      } else {
        joined = false;
        nick = null;
        $("join").hidden = false;
        $("talk").hidden = true;
        if (answer.error === "nick_reserved" || answer.error === "bad_credentials") {
          $("password-label").hidden = false;
          $("password").focus();
        }
        $("join-error").textContent = answer.reason;
      }
    });
  }

  function show(m) {
    switch (m.type) {
      case "hello": break;
      case "said":
        if (m.action) line("", "* ", who(m.nick), " " + m.text);
        else line("", who(m.nick), ": " + m.text);
        break;
      case "history":
        for (const said of m.messages) line("history", who(said.nick), ": " + said.text);
        break;
      case "joined": notice(m.nick + " joined"); break;
      case "left": notice(m.nick + " left"); break;
      case "renamed": notice(m.nick + " is now known as " + m.new); break;
      case "private": line("private", "*", who(m.from), "* " + m.text); break;
      case "mail":
        line("mail", m.count === 1
          ? "* new mail from " + m.from + ": " + m.subject
          : "* " + m.count + " new mails, latest from " + m.from + ": " + m.subject);
        break;
      case "shutdown": notice("the server will shut down in " + m.seconds + " seconds"); break;
      case "error": line("error", "* error: " + m.reason); break;
      default: break;
    }
  }

  function command(text) {
    const [name, ...rest] = text.split(" ");
    if (name === "/who") {
      request({ type: "who" }, (a) =>
        a.type === "ok" ? notice("here: " + a.nicks.join(", ")) : notice("error: " + a.reason));
    } else if (name === "/msg" && rest.length >= 2 && rest.slice(1).join(" ").trim()) {
      const to = rest[0], said = rest.slice(1).join(" ");
      request({ type: "msg", to: to, text: said }, (a) => {
        if (a.type !== "ok") notice("error: " + a.reason);
        else if (a.mailed) notice(to + " is not here: your message is in their mailbox");
        else line("private", "-> *", who(to), "* " + said);
      });
    } else if (name === "/me" && rest.join(" ").trim()) {
      // An action, in IRC's CTCP form: every front shows it as one.
      const done = rest.join(" ");
      request({ type: "say", text: "\u0001ACTION " + done + "\u0001" }, sayAnswered);
      line("", "* ", who(nick), " " + done);
    } else if (name === "/help") {
      notice("/who: who is here; /msg <nick> <text>: a private message; /me <text>: an action; //text: a message that begins with /");
    } else {
      notice("unknown command " + name + ", try /help");
    }
  }

  $("join").addEventListener("submit", (event) => {
    event.preventDefault();
    nick = $("nick").value.trim();
    password = $("password").value || null;
    $("join-error").textContent = "";
    if (nick) join(false);
  });

  $("talk").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = $("say"), text = field.value;
    if (!text.trim() || !joined) return;
    field.value = "";
    if (text.startsWith("//")) {
      request({ type: "say", text: text.slice(1) }, sayAnswered);
      line("", who(nick), ": " + text.slice(1));
    } else if (text.startsWith("/")) {
      command(text);
    } else {
      request({ type: "say", text: text }, sayAnswered);
      line("", who(nick), ": " + text);
    }
  });

  function sayAnswered(answer) {
    if (answer.type === "error") notice("error: " + answer.reason);
  }

  connect();
})();
