"""The Discord stand-in drives a real discord.py bot: slash commands (with options and groups),
buttons, modals, context menus, raw reactions, files, and Discord's refusals."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands
from discord.ext import commands

from tests.discord_standin import FakeDiscord, FakeGuild, FakeChannel, FakeMember, StandinTimeout

TOKEN = "standin-secret-token"


class ApproveView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=30)

    @discord.ui.button(label="Approve", style=discord.ButtonStyle.success, custom_id="approve")
    async def approve(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        button.disabled = True
        await interaction.response.edit_message(content=f"Approved by {interaction.user.name}", view=self)


class TeachModal(discord.ui.Modal, title="Teach the bot"):
    question = discord.ui.TextInput(label="Question", custom_id="question", max_length=200)
    answer = discord.ui.TextInput(label="Answer", custom_id="answer", style=discord.TextStyle.paragraph,
                                  max_length=500)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"Saved: {self.question.value} -> {self.answer.value}",
                                                ephemeral=True)


def make_bot(*, message_content: bool = True) -> commands.Bot:
    """A small bot exercising each kind of interaction the guildtune cogs will use."""
    intents = discord.Intents.default()
    intents.message_content = message_content
    intents.members = True
    bot = commands.Bot(command_prefix="!", intents=intents, chunk_guilds_at_startup=False)
    bot.seen_messages = []  # type: ignore[attr-defined]
    bot.seen_replies = []  # type: ignore[attr-defined]
    bot.mentioned = []  # type: ignore[attr-defined]

    @bot.tree.command(name="echo", description="Repeat some text")
    @app_commands.describe(text="what to say", times="how many times")
    async def echo(interaction: discord.Interaction, text: str, times: app_commands.Range[int, 1, 5] = 1,
                   secret: bool = False) -> None:
        await interaction.response.send_message(" ".join([text] * times), ephemeral=secret,
                                                allowed_mentions=discord.AllowedMentions.none())

    @bot.tree.command(name="shout", description="Say something too long")
    async def shout(interaction: discord.Interaction) -> None:
        try:
            await interaction.response.send_message("a" * 2001)
        except discord.HTTPException as exc:
            await interaction.response.send_message(f"refused: {exc.status} {exc.code}", ephemeral=True)

    @bot.tree.command(name="review", description="Show the review queue")
    async def review(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("1 example pending", view=ApproveView())

    @bot.tree.command(name="teach", description="Teach the bot an answer")
    async def teach(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(TeachModal())

    @bot.tree.command(name="ask", description="Ask the model")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await asyncio.sleep(0.05)
        await interaction.followup.send(f"answer to {question}", ephemeral=False,
                                        allowed_mentions=discord.AllowedMentions.none())

    @bot.tree.command(name="fetch", description="Fetch a message by id")
    async def fetch(interaction: discord.Interaction, message_id: str) -> None:
        try:
            msg = await interaction.channel.fetch_message(int(message_id))  # type: ignore[union-attr]
        except discord.NotFound as exc:
            await interaction.response.send_message(f"missing: {exc.status} {exc.code}")
        else:
            await interaction.response.send_message(f"found: {msg.content!r}")

    @bot.tree.command(name="count", description="Count lines of an uploaded file")
    async def count(interaction: discord.Interaction, file: discord.Attachment) -> None:
        data = await file.read()
        await interaction.response.defer()
        await interaction.channel.send(  # type: ignore[union-attr]
            f"{file.filename}: {len(data.splitlines())} lines",
            file=discord.File(io.BytesIO(data.upper()), filename="upper.txt"),
        )
        await interaction.followup.send("done")

    @bot.tree.command(name="slow", description="Takes too long to answer")
    async def slow(interaction: discord.Interaction) -> None:
        await asyncio.sleep(0.3)
        await interaction.response.send_message("too late")

    model = app_commands.Group(name="model", description="Model administration",
                               default_permissions=discord.Permissions(manage_guild=True), guild_only=True)

    @model.command(name="status", description="Show the active model")
    async def model_status(interaction: discord.Interaction, verbose: bool = False) -> None:
        if not interaction.permissions.manage_guild:
            await interaction.response.send_message("You need the Manage Server permission.", ephemeral=True)
            return
        await interaction.response.defer(thinking=True)
        await interaction.edit_original_response(content="checking…")
        await interaction.edit_original_response(content="v3 active" + (" (loss 0.42)" if verbose else ""))

    bot.tree.add_command(model)

    @bot.tree.context_menu(name="Teach as answer")
    async def teach_as_answer(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_message(
            f"teaching {message.author.name}'s answer: {message.content}", ephemeral=True)

    @bot.listen("on_raw_reaction_add")
    async def on_reaction(payload: discord.RawReactionActionEvent) -> None:
        if payload.user_id == bot.user.id or str(payload.emoji) != "👍":  # type: ignore[union-attr]
            return
        channel = bot.get_channel(payload.channel_id)
        message = await channel.fetch_message(payload.message_id)  # type: ignore[union-attr]
        await message.add_reaction("✅")
        await message.reply(f"<@{payload.user_id}> upvoted: {message.content}", mention_author=False)

    @bot.tree.command(name="stream", description="Stream an answer into a followup")
    async def stream(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("starting", ephemeral=True)
        msg = await interaction.followup.send("…", wait=True)
        for text in ("Low", "Low-rank", "Low-rank adapters."):
            await msg.edit(content=text)
        embed = discord.Embed(title="Sources", description="2 examples")
        note = await interaction.channel.send(embed=embed)  # type: ignore[union-attr]
        await note.edit(content="see above")
        await note.delete()

    @bot.tree.command(name="pick", description="Pick a model version")
    async def pick(interaction: discord.Interaction, version: str) -> None:
        view = discord.ui.View(timeout=30)
        select = discord.ui.Select(custom_id="confirm", options=[
            discord.SelectOption(label="yes", value="yes"), discord.SelectOption(label="no", value="no")])

        async def chosen(inner: discord.Interaction) -> None:
            await inner.response.defer()  # type 6: nothing visible yet
            await inner.edit_original_response(content=f"{version}: {select.values[0]}", view=None)

        select.callback = chosen
        view.add_item(select)
        await interaction.response.send_message(f"activate {version}?", view=view)

    @pick.autocomplete("version")
    async def pick_versions(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=f"v{i}", value=f"v{i}") for i in range(1, 40) if current in f"v{i}"][:25]

    @bot.tree.command(name="remindme", description="DM me a reminder")
    async def remindme(interaction: discord.Interaction) -> None:
        await interaction.user.send("Your example was approved.")
        await interaction.response.send_message("sent you a DM", ephemeral=True)

    @bot.listen("on_message")
    async def on_message(message: discord.Message) -> None:
        if not message.author.bot:
            bot.seen_messages.append(message.content)  # type: ignore[attr-defined]
            bot.mentioned.append(bot.user.mentioned_in(message))  # type: ignore[attr-defined,union-attr]
            if message.reference is not None:
                bot.seen_replies.append(message.reference.message_id)  # type: ignore[attr-defined]

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@dataclass
class World:
    fake: FakeDiscord
    guild: FakeGuild
    channel: FakeChannel
    alice: FakeMember
    mod: FakeMember
    bot: commands.Bot


def build(fake: FakeDiscord) -> tuple[FakeGuild, FakeChannel, FakeMember, FakeMember]:
    guild = fake.add_guild("Test Guild")
    channel = fake.add_channel(guild, "general")
    alice = fake.add_member(guild, "alice")
    mod = fake.add_member(guild, "mod", permissions=discord.Permissions(manage_guild=True))
    return guild, channel, alice, mod


@pytest.fixture
async def world():
    async with FakeDiscord() as fake:
        guild, channel, alice, mod = build(fake)
        bot = make_bot()
        await fake.start_bot(bot, token=TOKEN)
        yield World(fake, guild, channel, alice, mod, bot)
    assert bot.is_closed()


async def test_start_up_registers_commands_and_keeps_token_on_loopback(world: World) -> None:
    fake = world.fake
    assert world.bot.user.id == fake.bot_user.id
    assert world.bot.get_guild(world.guild.id).name == "Test Guild"
    assert fake.syncs == [None]
    names = {(c["name"], c["type"]) for c in fake.commands[None]}
    assert {("echo", 1), ("model", 1), ("Teach as answer", 3)} <= names
    assert fake.command("model")["default_member_permissions"] == str(1 << 5)
    assert fake.command("model")["options"][0]["name"] == "status"
    # Every REST request went to the stand-in with the bot token; nothing unexpected was asked for.
    assert fake.requests and all(r.path.startswith("/api/v10/") for r in fake.requests)
    assert {r.authorization for r in fake.requests} == {f"Bot {TOKEN}"}
    assert discord.http.Route.BASE.startswith(fake.base_url)


async def test_switches_are_restored_and_nothing_leaks() -> None:
    before = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    tasks_before = asyncio.all_tasks()
    async with FakeDiscord() as fake:
        build(fake)
        await fake.start_bot(make_bot(), token=TOKEN)
        port_url = fake.base_url
    assert (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == before
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - tasks_before if not t.done() and t is not asyncio.current_task()]
    assert leaked == []
    async with aiohttp.ClientSession() as session:  # the port is closed
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(port_url + "/api/v10/users/@me")


async def test_slash_command_with_options_and_allowed_mentions(world: World) -> None:
    fake = world.fake
    rec = await fake.slash(world.guild, world.channel, world.alice, "echo",
                           {"text": f"hi {world.mod.user.mention}", "times": 2})
    assert rec.response.type == 4 and not rec.ephemeral
    assert rec.text == f"hi <@{world.mod.id}> hi <@{world.mod.id}>"
    sent = fake.sent[-1]
    assert sent.kind == "response" and sent.channel is world.channel
    assert sent.allowed_mentions == {"parse": []}
    assert not sent.pings  # the mention is shown but notifies nobody

    secret = await fake.slash(world.guild, world.channel, world.alice, "echo", {"text": "psst", "secret": True})
    assert secret.ephemeral and fake.sent[-1].ephemeral


async def test_client_side_option_rules_are_enforced(world: World) -> None:
    fake = world.fake
    with pytest.raises(ValueError, match="outside 1..5"):
        await fake.slash(world.guild, world.channel, world.alice, "echo", {"text": "x", "times": 9})
    with pytest.raises(ValueError, match="needs option"):
        await fake.slash(world.guild, world.channel, world.alice, "echo", {})
    with pytest.raises(ValueError, match="no option"):
        await fake.slash(world.guild, world.channel, world.alice, "echo", {"text": "x", "colour": "red"})
    with pytest.raises(LookupError, match="registered"):
        await fake.slash(world.guild, world.channel, world.alice, "nope")


async def test_group_subcommand_defers_then_edits(world: World) -> None:
    fake = world.fake
    rec = await fake.slash(world.guild, world.channel, world.mod, "model status", {"verbose": True})
    assert rec.response.type == 5  # "thinking"
    assert (await rec.next_edit()).content == "checking…"
    assert (await rec.next_edit()).content == "v3 active (loss 0.42)"
    assert rec.text == "v3 active (loss 0.42)" and not rec.message.loading
    # The handler checks permissions itself (Discord lets admins override default_permissions).
    denied = await fake.slash(world.guild, world.channel, world.alice, "model status")
    assert denied.ephemeral and "Manage Server" in denied.text


async def test_first_followup_after_defer_fills_the_placeholder(world: World) -> None:
    rec = await world.fake.slash(world.guild, world.channel, world.alice, "ask", {"question": "why?"})
    assert rec.response.type == 5 and rec.response.ephemeral
    followup = await rec.next_followup()
    assert followup.message is rec.message  # no second message: the placeholder was resolved
    assert rec.text == "answer to why?" and followup.ephemeral  # the defer's ephemerality wins


async def test_content_over_2000_chars_is_refused_like_discord(world: World) -> None:
    rec = await world.fake.slash(world.guild, world.channel, world.alice, "shout")
    assert rec.text == "refused: 400 50035"
    refused = [r for r in world.fake.requests if r.path.endswith("/callback") and r.status == 400]
    assert len(refused) == 1


async def test_second_answer_and_unknown_message_get_discord_errors(world: World) -> None:
    fake = world.fake
    rec = await fake.slash(world.guild, world.channel, world.alice, "echo", {"text": "once"})
    url = f"{fake.base_url}/api/v10/interactions/{rec.id}/{rec.token}/callback"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"type": 4, "data": {"content": "twice"}}) as resp:
            assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
            body = await resp.json()
    assert body["code"] == 40060 and "already been acknowledged" in body["message"]

    missing = await fake.slash(world.guild, world.channel, world.alice, "fetch", {"message_id": "123456"})
    assert missing.text == "missing: 404 10008"
    real = await fake.post_message(world.channel, world.alice, "hello there")
    found = await fake.slash(world.guild, world.channel, world.alice, "fetch", {"message_id": str(real.id)})
    assert found.text == "found: 'hello there'"


async def test_button_click_updates_the_message(world: World) -> None:
    fake = world.fake
    rec = await fake.slash(world.guild, world.channel, world.mod, "review")
    assert [b["custom_id"] for b in rec.message.buttons] == ["approve"]
    click = await fake.click(rec, "approve", world.mod)
    assert click.response.type == 7
    assert rec.message.content == "Approved by mod"
    assert rec.message.component("approve")["disabled"] is True
    assert fake.sent[-1].kind == "edit" and fake.sent[-1].message is rec.message
    with pytest.raises(PermissionError, match="disabled"):
        await fake.click(rec, "approve", world.mod)


async def test_modal_round_trip(world: World) -> None:
    fake = world.fake
    rec = await fake.slash(world.guild, world.channel, world.alice, "teach")
    assert rec.response.is_modal and rec.modal["title"] == "Teach the bot"
    with pytest.raises(ValueError, match="required"):
        await fake.submit_modal(rec, {"question": "What is LoRA?"})
    with pytest.raises(ValueError, match="outside"):
        await fake.submit_modal(rec, {"question": "q", "answer": "x" * 501})
    submitted = await fake.submit_modal(rec, {"question": "What is LoRA?", "answer": "Low-rank adapters."})
    assert submitted.ephemeral
    assert submitted.text == "Saved: What is LoRA? -> Low-rank adapters."


async def test_message_context_menu(world: World) -> None:
    fake = world.fake
    msg = await fake.post_message(world.channel, world.alice, "Use a smaller learning rate.")
    rec = await fake.message_context_menu("Teach as answer", msg, world.mod)
    assert rec.text == "teaching alice's answer: Use a smaller learning rate."
    assert rec.ephemeral


async def test_raw_reaction_listener_fetches_reacts_and_replies(world: World) -> None:
    fake = world.fake
    msg = await fake.post_message(world.channel, world.alice, "great answer")
    await fake.react(msg, world.mod, "👍")
    assert msg.reaction_count("✅") == 1 and fake.bot_user.id in msg.reactions["✅"]
    reply = fake.sent[-1]
    assert reply.kind == "message" and reply.message.reference is msg
    assert reply.text == f"<@{world.mod.id}> upvoted: great answer"
    # discord.py's mention_author=False → replied_user False, but the <@mod> mention still pings:
    assert reply.allowed_mentions["replied_user"] is False
    assert reply.pings.users == {world.mod.id}
    await fake.react(msg, world.alice, "🎉")  # ignored by the listener
    assert fake.sent[-1] is reply


async def test_attachment_option_and_file_upload(world: World) -> None:
    fake = world.fake
    upload = fake.attachment("notes.txt", "one\ntwo\nthree\n", content_type="text/plain")
    rec = await fake.slash(world.guild, world.channel, world.alice, "count", {"file": upload})
    await rec.settle()
    channel_msg = next(s for s in fake.sent_in(world.channel) if s.kind == "message")
    assert channel_msg.content == "notes.txt: 3 lines"
    [att] = channel_msg.attachments
    assert att.filename == "upper.txt" and att.data == b"ONE\nTWO\nTHREE\n"
    assert rec.text == "done"


async def test_answering_after_the_deadline_is_unknown_interaction() -> None:
    async with FakeDiscord(interaction_deadline=0.1, strict=True) as fake:
        guild, channel, alice, _ = build(fake)
        await fake.start_bot(make_bot(), token=TOKEN)
        rec = await fake.slash(guild, channel, alice, "slow", timeout=2)
        assert rec.response is None
        late = [r for r in fake.requests if r.path.endswith("/callback")]
        assert [r.status for r in late] == [404]
        assert any("10062" in line or "Unknown interaction" in line for line in fake.bot_errors)
        with pytest.raises(StandinTimeout, match="never answered"):
            rec.text


async def test_message_content_intent_missing() -> None:
    async with FakeDiscord(message_content_intent=False) as fake:
        build(fake)
        with pytest.raises(discord.PrivilegedIntentsRequired):
            await fake.start_bot(make_bot(message_content=True), token=TOKEN)
        assert fake.close_codes == [4014]

    async with FakeDiscord(message_content_intent=False) as fake:
        guild, channel, alice, _ = build(fake)
        bot = make_bot(message_content=False)
        await fake.start_bot(bot, token=TOKEN)
        await fake.post_message(channel, alice, "can you read this?")
        await fake.post_message(channel, alice, f"{fake.bot_user.mention} and this?")
        assert bot.seen_messages == ["", f"{fake.bot_user.mention} and this?"]
        assert bot.mentioned == [False, True]
        assert bot.application.flags.gateway_message_content_limited is False

    async with FakeDiscord() as fake:
        guild, channel, alice, _ = build(fake)
        bot = make_bot()
        await fake.start_bot(bot, token=TOKEN)
        await fake.post_message(channel, alice, "can you read this?")
        assert bot.seen_messages == ["can you read this?"]
        assert bot.application.flags.gateway_message_content_limited is True


async def test_wrong_token_fails_login() -> None:
    async with FakeDiscord() as fake:
        build(fake)
        bot = make_bot()
        fake.token = "the-real-one"
        with pytest.raises(discord.LoginFailure):
            await bot.login("not-the-token")
        await bot.close()
        assert [(r.path, r.status) for r in fake.requests] == [("/api/v10/users/@me", 401)]


async def test_waiting_for_something_that_never_comes_says_what_happened(world: World) -> None:
    rec = await world.fake.slash(world.guild, world.channel, world.alice, "echo", {"text": "only once"})
    with pytest.raises(StandinTimeout, match="only once"):
        await rec.next_edit(timeout=0.2)


async def test_followup_edits_channel_embeds_and_deletes_are_logged_in_order(world: World) -> None:
    fake = world.fake
    rec = await fake.slash(world.guild, world.channel, world.alice, "stream")
    await rec.settle()
    assert rec.ephemeral and rec.text == "starting"
    first = await rec.next_followup()
    assert first.content == "…" and not first.ephemeral
    assert [(await rec.next_edit()).content for _ in range(3)] == ["Low", "Low-rank", "Low-rank adapters."]
    assert rec.all_text == "starting\nLow-rank adapters."
    kinds = [(s.kind, s.text) for s in fake.sent if s.interaction is rec or s.interaction is None][-7:]
    assert kinds == [("response", "starting"), ("followup", "…"), ("edit", "Low"), ("edit", "Low-rank"),
                     ("edit", "Low-rank adapters."), ("message", "Sources\n2 examples"),
                     ("edit", "see above\nSources\n2 examples")]
    assert fake.sent[-1].embeds[0]["title"] == "Sources"
    assert fake.deleted == [fake.sent[-1].message] and fake.sent[-1].message.deleted


async def test_autocomplete_select_and_deferred_component_update(world: World) -> None:
    fake = world.fake
    auto = await fake.autocomplete(world.guild, world.channel, world.mod, "pick", {"version": "v3"}, focused="version")
    assert [c["value"] for c in auto.choices] == ["v3"] + [f"v{i}" for i in range(30, 40)]
    rec = await fake.slash(world.guild, world.channel, world.mod, "pick", {"version": "v3"})
    with pytest.raises(ValueError, match="no option"):
        await fake.select(rec, "confirm", ["maybe"])
    chosen = await fake.select(rec, "confirm", ["yes"])
    assert chosen.response.type == 6
    await chosen.settle()
    assert rec.message.content == "v3: yes" and rec.message.components == []


async def test_user_reply_reaches_the_bot_with_its_reference(world: World) -> None:
    fake = world.fake
    question = await fake.post_message(world.channel, world.mod, "what is a LoRA rank?")
    answer = await fake.post_message(world.channel, world.alice, "the adapter's inner size", reference=question)
    assert world.bot.seen_replies == [question.id]
    assert answer.reference is question


async def test_direct_message_to_a_member(world: World) -> None:
    fake = world.fake
    rec = await fake.slash(world.guild, world.channel, world.alice, "remindme")
    assert rec.text == "sent you a DM"
    dm = next(s for s in fake.sent if s.kind == "message")
    assert dm.channel is fake.dm_channel(world.alice) and dm.text == "Your example was approved."


async def test_a_route_the_stand_in_lacks_fails_the_test_on_exit() -> None:
    with pytest.raises(AssertionError, match=r"(?s)does not serve.*GET /api/v10/channels/[0-9]+/messages/pins"):
        async with FakeDiscord() as fake:
            _, channel, _, _ = build(fake)
            bot = make_bot()
            await fake.start_bot(bot, token=TOKEN)
            with pytest.raises(discord.NotFound):
                async for _ in bot.get_channel(channel.id).pins():
                    pass


async def test_world_changes_after_start_reach_the_bot(world: World) -> None:
    fake = world.fake
    newcomer = fake.add_member(world.guild, "newcomer", permissions=discord.Permissions(manage_guild=True))
    lounge = fake.add_channel(world.guild, "lounge")
    await fake.settle()
    guild = world.bot.get_guild(world.guild.id)
    assert guild.get_channel(lounge.id).name == "lounge"
    assert guild.get_member(newcomer.id).guild_permissions.manage_guild
    rec = await fake.slash(world.guild, lounge, newcomer, "model status")
    assert "v3 active" in await rec.final_text()
