from twisted.application.service import ServiceMaker

txsmtp = ServiceMaker(
    "txsmtp",
    "txsmtpclient.tap",
    "Send mail queued in a txsmtpclient spool through an SMTP relay, on schedule",
    "txsmtp",
)
