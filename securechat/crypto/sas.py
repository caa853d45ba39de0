"""Short authentication strings (SAS) with vodozemac's ``Sas``, for ``securechat verify``.

Two people compare seven emoji (or three numbers) read from a shared
secret that only the two devices hold.  A server in the middle would have
to guess the other side's key before seeing it, which the commitment sent
first rules out; so equal emoji prove that both see each other's real keys.
The MACs then bind the identity keys being verified to that secret.
"""

import hashlib

import vodozemac

from securechat import wire

EMOJI = [
    ("🐶", "Dog"), ("🐱", "Cat"), ("🦁", "Lion"), ("🐎", "Horse"), ("🦄", "Unicorn"),
    ("🐷", "Pig"), ("🐘", "Elephant"), ("🐰", "Rabbit"), ("🐼", "Panda"), ("🐓", "Rooster"),
    ("🐧", "Penguin"), ("🐢", "Turtle"), ("🐟", "Fish"), ("🐙", "Octopus"), ("🦋", "Butterfly"),
    ("🌷", "Flower"), ("🌳", "Tree"), ("🌵", "Cactus"), ("🍄", "Mushroom"), ("🌏", "Globe"),
    ("🌙", "Moon"), ("☁️", "Cloud"), ("🔥", "Fire"), ("🍌", "Banana"), ("🍎", "Apple"),
    ("🍓", "Strawberry"), ("🌽", "Corn"), ("🍕", "Pizza"), ("🎂", "Cake"), ("❤️", "Heart"),
    ("😀", "Smiley"), ("🤖", "Robot"), ("🎩", "Hat"), ("👓", "Glasses"), ("🔧", "Spanner"),
    ("🎅", "Santa"), ("👍", "Thumbs Up"), ("☂️", "Umbrella"), ("⌛", "Hourglass"), ("⏰", "Clock"),
    ("🎁", "Gift"), ("💡", "Light Bulb"), ("📕", "Book"), ("✏️", "Pencil"), ("📎", "Paperclip"),
    ("✂️", "Scissors"), ("🔒", "Lock"), ("🔑", "Key"), ("🔨", "Hammer"), ("☎️", "Telephone"),
    ("🏁", "Flag"), ("🚂", "Train"), ("🚲", "Bicycle"), ("✈️", "Aeroplane"), ("🚀", "Rocket"),
    ("🏆", "Trophy"), ("⚽", "Ball"), ("🎸", "Guitar"), ("🎺", "Trumpet"), ("🔔", "Bell"),
    ("⚓", "Anchor"), ("🎧", "Headphones"), ("📁", "Folder"), ("📌", "Pin"),
]


def commitment(public_key, start):
    """What the responder commits to before it may see the initiator's key."""
    return hashlib.sha256(public_key.encode("ascii") + wire.canonical_json(start)).hexdigest()


class SasSession:
    """One side of one verification: our ephemeral key, then the shared secret."""

    def __init__(self):
        self._sas = vodozemac.Sas()
        self.public_key = wire.pad_b64(self._sas.public_key.to_base64())
        self._established = None

    def establish(self, their_key):
        try:
            key = vodozemac.Curve25519PublicKey.from_base64(their_key.rstrip("="))
            self._established = self._sas.diffie_hellman(key)
        except (vodozemac.KeyException, vodozemac.SasException) as e:
            raise ValueError(f"unusable verification key: {e}") from None

    def short_string(self, info):
        """Seven emoji with their names, and three 4-digit numbers, to compare aloud."""
        sas_bytes = self._established.bytes(info)
        emoji = [EMOJI[i] for i in sas_bytes.emoji_indices]
        return ("  ".join(f"{symbol} {name}" for symbol, name in emoji),
                " ".join(str(n) for n in sas_bytes.decimals))

    def mac(self, value, info):
        return self._established.calculate_mac(value, info)

    def mac_matches(self, value, info, tag):
        try:
            self._established.verify_mac(value, info, tag)
            return True
        except vodozemac.SasException:
            return False
