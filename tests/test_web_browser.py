"""
The browser chat in Debian's headless Chromium (Selenium through
/usr/bin/chromedriver) against a real C{twistd -n mailsvc}: it joins from
the page and talks with a netcat-style user on the chat port and an IRC
user, both ways; markup in a nickname or a message shows as text; it
reconnects by itself, and says so, when the server restarts. A screenshot
of the page is saved under the test's temporary directory.

Waits are Selenium's: poll the page until it shows what is expected, for at
most L{WAIT} seconds.
"""

import pytest

from conftest import require

WAIT = 20
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def browser(tmp_path):
    chromium = require("chromium", "chromium")
    chromedriver = require("chromedriver", "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--user-data-dir=%s" % (tmp_path / "chromium-profile",),
        "--window-size=900,700",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT).until(lambda d: condition(d), message=what)


def log_text(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "log").text


def shows(driver, text):
    wait_for(driver, lambda d: text in log_text(d), "the page to show %r" % (text,))


def type_into(driver, element_id, text):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text + Keys.ENTER)


def line_until(client, predicate):
    """Lines from C{client} until one satisfies C{predicate} (socket timeouts bound it)."""
    while True:
        line = client.line()
        if predicate(line):
            return line


def irc_user(server, nick):
    from mailsvc.testing.process import Client

    irc = Client(server.ports["irc"])
    irc.send("NICK %s\r\nUSER %s 0 * :%s\r\n" % (nick, nick, nick))
    line_until(irc, lambda l: " 001 " in l)
    irc.send("JOIN #chat\r\n")
    line_until(irc, lambda l: " 366 " in l)
    return irc


def no_alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        text = driver.switch_to.alert.text
    except NoAlertPresentException:
        return
    pytest.fail("the page ran script from chat text: alert %r" % (text,))


@pytest.mark.e2e
def test_the_page_chats_with_netcat_and_irc_users(mailsvc_process, browser, tmp_path):
    from selenium.webdriver.common.by import By

    server = mailsvc_process("--shutdown-grace", "1")
    web_port = server.ports["web"]
    bob = server.connect_chat()
    bob("NICK bob")
    ivy = irc_user(server, "ivy")

    browser.get("http://127.0.0.1:%d/" % (web_port,))
    wait_for(browser, lambda d: d.find_element(By.ID, "state").text == "connected", "connected")
    # A nickname of markup is refused by the server, and its words are text.
    assert not browser.find_element(By.ID, "say").is_displayed()
    type_into(browser, "nick", XSS)
    wait_for(
        browser,
        lambda d: "invalid nickname" in d.find_element(By.ID, "join-error").text,
        "the refusal",
    )
    type_into(browser, "nick", "webby")
    shows(browser, "you joined as webby")
    assert browser.find_element(By.ID, "say").is_displayed()
    assert not browser.find_element(By.ID, "nick").is_displayed()
    line_until(bob, lambda l: l == "* webby joined")
    line_until(ivy, lambda l: l.startswith(":webby!") and " JOIN " in l)

    # The page to both, and both to the page.
    type_into(browser, "say", "hello from the web " + XSS)
    line_until(bob, lambda l: l == "webby: hello from the web " + XSS)
    line_until(ivy, lambda l: l.endswith("PRIVMSG #chat :hello from the web " + XSS))
    bob.send("hi web, from netcat <b>bold</b>\n")
    shows(browser, "bob: hi web, from netcat <b>bold</b>")
    ivy.send("PRIVMSG #chat :hi web, from irc %s\r\n" % (XSS,))
    shows(browser, "ivy: hi web, from irc " + XSS)
    # Private messages, both ways, and /who.
    type_into(browser, "say", "/msg bob psst")
    line_until(bob, lambda l: l == "*webby* psst")
    bob.send("/msg webby back at you\n")
    shows(browser, "*bob* back at you")
    type_into(browser, "say", "/who")
    shows(browser, "here: bob, ivy, webby")

    # Markup stayed text: no element was made of it, no script ran.
    assert browser.find_elements(By.CSS_SELECTOR, "#log img, #log b, #log script") == []
    no_alert(browser)
    browser.save_screenshot(str(tmp_path / "web-chat.png"))
    assert (tmp_path / "web-chat.png").stat().st_size > 0

    # The server restarts on the same port: the page is told, reconnects by
    # itself, says so, and joins again under its nickname.
    bob.close()
    ivy.close()
    server.stop()
    shows(browser, "the server will shut down in 1 seconds")
    shows(browser, "connection lost: reconnecting")
    again = mailsvc_process("--web-port", "tcp:%d:interface=127.0.0.1" % (web_port,))
    shows(browser, "reconnected")
    shows(browser, "joined again as webby")
    carol = again.connect_chat()
    carol("NICK carol")
    carol.send("/who\n")
    line_until(carol, lambda l: l == "* here: carol, webby")
    carol.close()
    no_alert(browser)
