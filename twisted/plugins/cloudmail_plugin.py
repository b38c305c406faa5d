"""The twistd plugin: `twistd -n cloudmail --config FILE` starts the mail server."""

from twisted.application.service import ServiceMaker

cloudmail = ServiceMaker(
    "cloudmail",
    "cloudmail.tap",
    "A complete, self-hosted mail server: SMTP, submission, IMAP, ManageSieve and an admin API.",
    "cloudmail",
)
