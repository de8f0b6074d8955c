from twisted.application.service import ServiceMaker

mailsvc = ServiceMaker(
    "mailsvc", "mailsvc.tap", "Mail command service and group chat", "mailsvc"
)
